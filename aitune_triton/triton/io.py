"""The IO mapping between a graph spec's leaves and a Triton model's tensors.

One :class:`ModelIO` per graph model is shared by the config generator, the generated
``model.py`` (as ``io.json``) and :class:`~aitune_triton.triton.client.RemoteModule` (through the
entry model's configuration parameters), so all three agree on names, dtypes, dims and the
batch axis.

Rules (Triton model configuration docs, "Maximum Batch Size" and "Inputs and Outputs"):

* ``max_batch_size > 0`` only when every input and output has its batch axis at dim 0; the dims
  then leave the batch axis out. Otherwise ``max_batch_size: 0`` and dims are full shapes.
* A dim whose size varied across recorded calls is ``-1``; a fixed one keeps its size. A tensor
  left with no dims is declared as ``dims: [1]`` with ``reshape: { shape: [] }``.
* Tensor names are leaf paths (``input_ids``, ``hidden.0``) with characters outside
  ``[A-Za-z0-9_.-]`` replaced by ``_``, made unique with a ``__N`` suffix when needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Mapping

from aitune_triton.contract import InputContract
from aitune_triton.errors import ExportError
from aitune_triton.module.description import TunedGraphDescription
from aitune_triton.served.padding import PaddingLayout
from aitune_triton.spec import TensorSpec

__all__ = ["ModelIO", "TensorIO", "TORCH_TO_TRITON_DTYPE", "triton_dtype"]

#: torch dtype name -> Triton config data type (Triton "Datatypes" table).
TORCH_TO_TRITON_DTYPE = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    # numpy has no bfloat16: generated models move it through DLPack into torch, RemoteModule
    # sends and reads it as ml_dtypes.bfloat16 (what tritonclient takes for "BF16").
    "bfloat16": "TYPE_BF16",
}


def triton_dtype(dtype: str, path: str = "") -> str:
    """Triton config data type (``TYPE_FP32``) for a torch dtype name.

    Raises:
        ExportError: the dtype has no Triton data type a Python-backend model can carry
            (complex, float8...).
    """
    try:
        return TORCH_TO_TRITON_DTYPE[dtype]
    except KeyError:
        raise ExportError(
            f"tensor {path!r}: dtype {dtype} cannot cross a Python-backend model (supported: "
            f"{sorted(TORCH_TO_TRITON_DTYPE)}). Cast it in the module before export."
        ) from None


@dataclass(frozen=True)
class TensorIO:
    """One Triton tensor of a graph model.

    Attributes:
        name: Triton tensor name.
        path: Leaf path in the module's inputs or outputs.
        dtype: Torch dtype name (``float32``).
        data_type: Triton config data type (``TYPE_FP32``).
        dims: Config dims: per-sample dims when the model batches, full dims otherwise; -1 =
            dynamic. Empty when the tensor has no axis besides the batch (or none at all); such a
            tensor is declared as dims ``[1]`` (reshaped to ``[]`` when the model batches) and
            travels with an extra trailing axis of size 1 (see :meth:`ModelIO.wire_shape`).
        batch_axis: Axis of the batch in the full shape, or None.
        ranges: Per axis of the full (module) shape, the ``[min, max]`` size the artifact accepts.
    """

    name: str
    path: str
    dtype: str
    data_type: str
    dims: tuple[int, ...]
    batch_axis: int | None
    ranges: tuple[tuple[int, int], ...] = ()

    @property
    def client_datatype(self) -> str:
        """Datatype string of the inference protocol (``FP32``), as tritonclient expects."""
        return self.data_type.removeprefix("TYPE_")

    @property
    def carried_as_column(self) -> bool:
        """Whether the config declares it as dims ``[1]`` because it has no dims of its own."""
        return not self.dims

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        data = asdict(self)
        data["dims"] = list(self.dims)
        data["ranges"] = [list(r) for r in self.ranges]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorIO":
        """Rebuild from :meth:`to_dict`."""
        return cls(**{**data, "dims": tuple(data["dims"]), "ranges": tuple(tuple(r) for r in data.get("ranges", ()))})


def _served_padding(padding: Mapping[str, Any] | None, inputs: list[str], outputs: list[str]) -> dict[str, Any] | None:
    """The held padding layout of a graph spec with its inputs and outputs named by tensor name, or None."""
    if not padding or not padding.get("held") or not padding.get("layout"):
        return None
    layout = PaddingLayout.from_dict(padding["layout"]).to_dict()
    if len(layout["input_names"]) != len(inputs) or len(layout["output_names"]) != len(outputs):
        raise ExportError(
            f"padding layout names {len(layout['input_names'])} inputs and {len(layout['output_names'])} outputs, but the "
            f"graph spec has {len(inputs)} and {len(outputs)}; tune the module again"
        )
    layout["input_names"], layout["output_names"] = list(inputs), list(outputs)
    return layout


def _unique_names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", path) or "output"
        name, counter = base, 1
        while name in names:
            counter += 1
            name = f"{base}__{counter}"
        names.append(name)
    return names


@dataclass
class ModelIO:
    """The IO mapping of one graph model.

    Attributes:
        model_name: Triton model name.
        graph: Graph spec name (``graph_0``).
        key: The graph spec's input structure key; RemoteModule matches calls against it.
        description: Human-readable input structure.
        backend: Backend that produced the artifact.
        artifact: Artifact file name in the version directory.
        max_batch_size: Triton ``max_batch_size`` (0 = the model does not batch).
        inputs: Input tensors in the artifact's input order.
        outputs: Output tensors in the artifact's output order.
        output_treespec: Output structure (``torch.utils._pytree.treespec_dumps`` JSON).
        output_template: Output leaves, ``None`` for tensors and constant values otherwise.
        output_paths: Dotted path of every output leaf, tensors and constants, in flattening order.
        constants: Non-tensor arguments the artifact was built with (path -> ``const(value)``).
        version: The model version this mapping describes (set at export).
        input_axes: Per input, per axis of the module shape: the size the export fixed, or the
            symbol of its size (axes with one symbol must be equal); None when unknown.
        index_ranges: Per input, the value ranges of the indexing ops it reaches
            (:class:`~aitune_triton.contract.IndexRange` dicts; empty lists for other inputs);
            None when unknown.
        preferred_batch_size: The batch size the dynamic batcher should aim for (the graph spec's
            ``preferred_batch_size``: measured by the batch size sweep, or a declared opt), or None.
        served_names: Tensor name here -> the name the graph model itself uses, for a graph model
            served by one of Triton's own backends (its artifact's tensor names, see
            :mod:`aitune_triton.triton.native`); empty (and left out of :meth:`to_dict`) when the
            graph model uses :attr:`TensorIO.name`.
        padding: Where the model pads variable-length requests into one batch: the
            :class:`~aitune_triton.served.padding.PaddingLayout` dict (per input the padded axis,
            pad value and whether it is a mask, per output the axis cut back to each request's
            length, all named by tensor name), set only when tuning's padding invariance check
            held and the model batches; None (left out of :meth:`to_dict`) otherwise.
    """

    model_name: str
    graph: str
    key: str
    description: str
    backend: str
    artifact: str
    max_batch_size: int
    inputs: list[TensorIO]
    outputs: list[TensorIO]
    output_treespec: str
    output_template: list[Any] = field(default_factory=list)
    output_paths: list[str] = field(default_factory=list)
    constants: dict[str, str] = field(default_factory=dict)
    version: int = 1
    input_axes: list[list[int | str]] | None = None
    index_ranges: list[list[dict[str, Any]]] | None = None
    preferred_batch_size: int | None = None
    served_names: dict[str, str] = field(default_factory=dict)
    padding: dict[str, Any] | None = None

    @classmethod
    def from_graph(
        cls,
        model_name: str,
        graph: TunedGraphDescription | Mapping[str, Any],
        backend: Mapping[str, Any] | None = None,
        version: int = 1,
    ) -> "ModelIO":
        """Build the mapping of a tuned graph spec (an entry of ``TunedDescription.graphs``).

        The model batches (``max_batch_size`` = the largest batch size) when every input and
        output has its batch axis at dim 0 and tuning did not find the outputs depending on other
        samples of the batch (``batch_independent`` is not False). A batching model whose padding
        invariance check held (``padding["held"]``) gets :attr:`padding`, with tensor names.

        Args:
            model_name: Triton model name.
            graph: The tuned graph spec; or, with ``backend``, a graph spec description dict
                (``GraphSpec.to_dict()``), read as such an entry.
            backend: With a graph spec dict: its backend description (``Backend.to_dict()``).
            version: The model version this mapping describes.

        Raises:
            ExportError: a tensor dtype cannot be served.
            InvalidStateDictError: ``graph`` / ``backend`` dicts are malformed.
        """
        entry = graph if isinstance(graph, TunedGraphDescription) else TunedGraphDescription.from_dict(
            {"graph": graph, "backend": backend, "report": None}, "graph"
        )
        spec, described = entry.graph, entry.backend
        inputs, outputs = list(spec.inputs), list(spec.outputs)
        batching = bool(inputs) and all(t.batch_axis == 0 for t in inputs + outputs) and spec.batch_independent is not False
        batch = spec.batch_size_range
        max_batch_size = batch.max if batching and batch is not None else 0
        names = _unique_names([t.path for t in inputs + outputs])

        def tensor(tensor_spec: TensorSpec, name: str) -> TensorIO:
            dims = [-1 if dim_name else size for dim_name, size in zip(tensor_spec.dim_names, tensor_spec.max_shape)]
            return TensorIO(
                name=name,
                path=tensor_spec.path,
                dtype=tensor_spec.dtype,
                data_type=triton_dtype(tensor_spec.dtype, tensor_spec.path),
                dims=tuple(dims[1:] if batching else dims),
                batch_axis=tensor_spec.batch_axis,
                ranges=tuple(spec.axis_range(tensor_spec, axis).bounds for axis in range(tensor_spec.rank)),
            )

        return cls(
            model_name=model_name,
            graph=spec.name,
            key=spec.key,
            description=spec.description,
            backend=described.name,
            artifact=described.artifact().name,
            max_batch_size=max_batch_size,
            inputs=[tensor(s, n) for s, n in zip(inputs, names)],
            outputs=[tensor(s, n) for s, n in zip(outputs, names[len(inputs) :])],
            output_treespec=spec.output_treespec_json,
            output_template=spec.output_template,
            output_paths=spec.output_paths,
            constants=spec.constants,
            version=version,
            input_axes=described.input_axes,
            index_ranges=described.index_ranges,
            preferred_batch_size=spec.preferred_batch_size if batching else None,
            padding=_served_padding(spec.padding, names[: len(inputs)], names[len(inputs) :]) if max_batch_size > 0 else None,
        )

    @property
    def ragged_inputs(self) -> list[str]:
        """Names of the inputs the model pads (``allow_ragged_batch`` in its configuration)."""
        if self.padding is None:
            return []
        return [name for name, axis in zip(self.padding["input_names"], self.padding["input_axes"]) if axis is not None]

    @cached_property
    def contract(self) -> InputContract:
        """The artifact's input contract, naming inputs by leaf path (the served ``model.py`` builds
        the same one from ``io.json`` with tensor names)."""
        return InputContract.from_io(self.to_dict(), name_key="path", batch_hint=False)  # RemoteModule says it once

    def full_dims(self, tensor: TensorIO) -> tuple[int, ...]:
        """Dims including the batch axis (as ``-1``) when the model batches."""
        return ((-1,) + tensor.dims) if self.max_batch_size > 0 else tensor.dims

    @staticmethod
    def wire_shape(tensor: TensorIO, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``tensor`` on the wire (what clients send and receive) for a module shape.

        A tensor without dims of its own (``[batch]`` in a batching model, a 0-d tensor in one
        that does not batch) is declared as dims ``[1]`` (Triton needs at least one dim), so it
        travels with an extra trailing axis of size 1; other shapes are unchanged.
        """
        return tuple(shape) + (1,) if tensor.carried_as_column else tuple(shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (``io.json``)."""
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        if not self.served_names:
            del data["served_names"]
        if self.padding is None:
            del data["padding"]
        return data

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIO":
        """Rebuild from :meth:`to_dict`."""
        return cls(
            **{
                **data,
                "inputs": [TensorIO.from_dict(t) for t in data["inputs"]],
                "outputs": [TensorIO.from_dict(t) for t in data["outputs"]],
            }
        )
