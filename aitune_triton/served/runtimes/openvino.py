"""OpenVINO: the IR ``model.xml`` (weights in ``model.bin`` beside it) compiled for the CPU plugin,
the same way in process and served.

:func:`compile_properties` and :func:`load_compiled` are what
``aitune_triton.backends.openvino.OpenVINOBackend`` uses too, so the served model compiles with
exactly the precision hint and thread count measured and stored at build. ``openvino`` is imported
inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["INFERENCE_PRECISIONS", "Runtime", "compile_properties", "load_compiled"]

#: Stored ``precision`` -> the CPU plugin's ``INFERENCE_PRECISION_HINT``. int8 models carry their
#: quantization in the graph (FakeQuantize ops); the operations left in float run in f32.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def compile_properties(options: dict[str, Any]) -> dict[str, Any]:
    """The CPU plugin's compile properties for a backend's stored options.

    Always ``PERFORMANCE_HINT=LATENCY`` (one stream: one call uses every thread) and an explicit
    ``INFERENCE_PRECISION_HINT`` (the plugin's default is bf16 on CPUs that compute bf16 natively,
    which would change fp32 results silently). ``INFERENCE_NUM_THREADS`` comes from
    ``intra_op_num_threads`` (the served model's per-instance threads, when the export sets them),
    else from ``inference_num_threads`` (measured at build), else the plugin's default.

    Args:
        options: The backend's stored options (``precision``: a key of
            :data:`INFERENCE_PRECISIONS`, default ``"fp32"``; ``inference_num_threads``: an int).

    Returns:
        Property name -> value, as ``openvino.Core.compile_model`` takes them.
    """
    properties: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[str(options.get("precision", "fp32"))],
    }
    threads = options.get("intra_op_num_threads") or options.get("inference_num_threads")
    if threads:
        properties["INFERENCE_NUM_THREADS"] = int(threads)
    return properties


def load_compiled(path: str, options: dict[str, Any]) -> Any:
    """The ``openvino.CompiledModel`` of the IR at ``path`` on the CPU plugin.

    Args:
        path: The ``.xml`` file; its weights are read from the ``.bin`` file of the same name beside it.
        options: The backend's stored options (see :func:`compile_properties`).

    Returns:
        An ``openvino.CompiledModel``.
    """
    import openvino

    core = openvino.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", compile_properties(options))


class Runtime:
    """The compiled IR on the CPU; ``options`` are the backend's stored options.

    The CPU plugin is the only one used: a GPU instance kind still runs on the CPU (OpenVINO's GPU
    plugin targets Intel GPUs).
    """

    def __init__(self, path: str, gpu: bool, device_id: int, options: dict[str, Any]) -> None:
        self.compiled: Any = load_compiled(path, options)
        self.request: Any = self.compiled.create_infer_request()
        # Inputs are named input_<i> by their position in the graph spec; one the graph never reads may be gone.
        self.present = {name for port in self.compiled.inputs for name in port.get_names()}

    def run(self, values: Sequence[Any]) -> list[Any]:
        """Outputs (numpy arrays, copied out of the request's buffers) on ``values`` (numpy arrays in input order)."""
        import numpy

        feed = {f"input_{i}": numpy.ascontiguousarray(value) for i, value in enumerate(values) if f"input_{i}" in self.present}
        results = self.request.infer(feed)
        return [numpy.array(results[output], copy=True) for output in self.compiled.outputs]

    def close(self) -> None:
        """Drop the compiled model."""
        self.request = None
        self.compiled = None
