"""ONNX Runtime: the session over ``model.onnx``, built the same way in process and served.

:func:`session_options` and :func:`load_session` are what
``aitune_triton.backends.onnxruntime.OnnxRuntimeBackend`` uses too, so the served session runs
with exactly the options measured and stored at build. ``onnxruntime`` is imported inside the
functions, so importing this module (the in-process backend does) stays cheap.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "Runtime", "instance_providers", "load_session", "session_options"]

#: Stored ``graph_optimization_level`` -> ``onnxruntime.GraphOptimizationLevel`` member name.
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(options: dict[str, Any]) -> Any:
    """The ``onnxruntime.SessionOptions`` for a backend's stored options.

    ``graph_optimization_level`` and ``intra_op_num_threads`` are applied when present (ONNX
    Runtime's defaults otherwise: every optimization, one thread per physical core). Always:
    ``inter_op_num_threads=1`` (the session runs nodes sequentially, so it needs no inter-op pool)
    and ``session.intra_op.allow_spinning="0"``: idle worker threads sleep instead of spinning, so
    they do not take the cores from whatever runs next (measurements: see
    ``aitune_triton.backends.onnxruntime``).

    Args:
        options: The backend's stored options (``graph_optimization_level``: a key of
            :data:`GRAPH_OPTIMIZATION_LEVELS`; ``intra_op_num_threads``: an int).

    Returns:
        An ``onnxruntime.SessionOptions``.
    """
    import onnxruntime

    result = onnxruntime.SessionOptions()
    level = options.get("graph_optimization_level")
    if level is not None:
        result.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[level])
    threads = options.get("intra_op_num_threads")
    if threads is not None:
        result.intra_op_num_threads = int(threads)
    result.inter_op_num_threads = 1
    result.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return result


def load_session(path: str, options: dict[str, Any], providers: Sequence[Any]) -> Any:
    """An ``onnxruntime.InferenceSession`` on the model file ``path`` with :func:`session_options`.

    Args:
        path: The ``.onnx`` file.
        options: The backend's stored options.
        providers: Execution providers, as ``InferenceSession`` takes them (names or
            ``(name, provider options)`` pairs).

    Returns:
        An ``onnxruntime.InferenceSession``.
    """
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), sess_options=session_options(options), providers=list(providers))


def instance_providers(gpu: bool, device_id: int) -> list[Any]:
    """The providers of a served instance: the instance's GPU then CPU, or CPU (the instance kind
    decides, not the tuning device)."""
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]


class Runtime:
    """An ONNX Runtime session over the artifact; ``options`` are the backend's stored options."""

    def __init__(self, path: str, gpu: bool, device_id: int, options: dict[str, Any]) -> None:
        self.session: Any = load_session(path, options, instance_providers(gpu, device_id))
        # An exporter may drop an input the graph never reads; the others keep their input_<i> names.
        self.present = {node.name for node in self.session.get_inputs()}
        self._feed_names: list[tuple[int, str]] | None = None  # (position, name) of the inputs the session takes
        self._count = 0

    def run(self, values: Sequence[Any]) -> list[Any]:
        """Outputs (numpy arrays) of the session on ``values`` (numpy arrays in input order)."""
        if self._feed_names is None or len(values) != self._count:
            self._count = len(values)
            self._feed_names = [(i, f"input_{i}") for i in range(len(values)) if f"input_{i}" in self.present]
        return list(self.session.run(None, {name: values[i] for i, name in self._feed_names}))

    def close(self) -> None:
        """Drop the session."""
        self.session = None
