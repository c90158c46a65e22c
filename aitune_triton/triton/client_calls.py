"""The transport-free half of RemoteModule and AsyncRemoteModule: read the entry model's routes,
turn a call into Triton requests (split by ``max_batch_size``) and the answers back into the
module's outputs. Both clients use it, so they take the same arguments and return the same outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from aitune_triton._warnings import warn
from aitune_triton.contract import INDEX_HINT
from aitune_triton.errors import (
    ArgumentTypeError,
    GraphSpecMismatchError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    OutputStructureError,
    RemoteInferenceError,
    UnknownOutputTypeError,
)
from aitune_triton.graph_diff import mismatch_message
from aitune_triton.spec import CallLayouts, ForwardSignature, flat_output, rebuild_output, treespec_from_json
from aitune_triton.triton.client_transport import torch_tensor, wire_array
from aitune_triton.served.routes import ROUTES_PARAMETER, Routes, RoutesError
from aitune_triton.triton.io import ModelIO

__all__ = ["PreparedCall", "RemoteRoutes", "TritonRequest"]


@dataclass
class TritonRequest:
    """One inference request: the arrays to send, named as the graph model names them.

    Attributes:
        model_name: Graph model to call.
        version: Its version, as a string.
        inputs: ``(tensor name, array, protocol datatype such as "FP32")`` per input.
        outputs: Output tensor names to ask for, in the IO mapping's order.
    """

    model_name: str
    version: str
    inputs: list[tuple[str, np.ndarray, str]]
    outputs: list[str]


@dataclass
class PreparedCall:
    """A call turned into requests: one, or one per part of a batch above ``max_batch_size``."""

    io: ModelIO
    requests: list[TritonRequest]


def routes_from_config(config: dict[str, Any], model_name: str) -> Routes:
    """The routes an entry model's configuration (as JSON) carries.

    Raises:
        RemoteInferenceError: the model has no routes parameter (not an entry model we exported),
            or it is not the routes JSON.
    """
    try:
        routes = Routes.from_config_json(config)
    except RoutesError as error:
        raise RemoteInferenceError(
            f"model {model_name!r}: its {ROUTES_PARAMETER!r} parameter cannot be read ({error}); export the module again."
        ) from None
    if routes is None:
        raise RemoteInferenceError(
            f"model {model_name!r} has no {ROUTES_PARAMETER!r} parameter: it is not an entry model exported "
            "by aitune_triton. Pass the module's name, not a graph model's."
        )
    return routes


class RemoteRoutes:
    """An entry model's forward signature and graph models, and the call <-> request conversions.

    Args:
        model_name: The entry model name.
        routes: The parsed routes (see :func:`routes_from_config`).
        output_structure: ``"module"`` or ``"flat"`` (see :class:`~aitune_triton.RemoteModule`).
    """

    def __init__(self, model_name: str, routes: Routes, output_structure: str):
        self.model_name = model_name
        self.output_structure = output_structure
        self.signature = ForwardSignature.from_dict(routes.signature)
        self.strict = routes.strict
        self.graphs = [ModelIO.from_dict(dict(route.io)) for route in routes.graphs]
        self._by_key = {io.key: io for io in self.graphs}
        self._treespecs: dict[str, Any] = {}
        # A call shaped like an earlier one reuses its bound layout (no signature binding, key
        # paths or JSON key per call): the biggest client cost of a small served call.
        self._layouts = CallLayouts(self.signature, self.strict)

    def prepare(self, args: tuple, kwargs: dict) -> PreparedCall:
        """Bind, flatten and match a call, check it against the artifact's contract and build its
        requests; a batch above a batching model's ``max_batch_size`` becomes several requests of
        near-equal batch sizes. Nothing is sent.

        Raises:
            TypeError: the arguments do not fit the forward signature; ``ArgumentTypeError`` for a
                numpy array given where a tensor is expected.
            GraphSpecMismatchError: no graph spec matches (the message names the differences from
                the closest ones), other constants than the artifact was built with, or shapes
                outside the exported ranges.
            IndexOutOfRangeError: an index-valued input holds a value its indexing op refuses.
        """
        call = self._layouts.flatten(args, kwargs)
        if any(isinstance(leaf, np.ndarray) for leaf in call.flat.leaves):
            raise ArgumentTypeError("RemoteModule: pass torch tensors, as to the module itself; got a numpy array.")
        io = self._by_key.get(call.key)
        if io is None:
            raise GraphSpecMismatchError(
                mismatch_message(
                    f"{self.model_name}: the call matches no exported graph spec.",
                    call,
                    [(g.graph, g.description) for g in self.graphs],
                    strict=self.strict,
                )
            )
        if call.flat.constants != io.constants:  # non-strict modules only: strict keys include constants
            differ = [
                f"{path}: {value}, expected {io.constants.get(path, 'nothing')}"
                for path, value in call.flat.constants.items()
                if io.constants.get(path) != value
            ]
            raise GraphSpecMismatchError(
                f"{io.model_name}: the call passes other constant arguments ({'; '.join(differ)}) than the served artifact "
                "was built with, and a served model cannot run the module eagerly. Record such calls with strict=True "
                "(the default) so that they get their own graph spec."
            )
        tensors = call.flat.tensors
        parts = [tensors]
        batch = tensors[0].shape[0] if io.max_batch_size > 0 and tensors and tensors[0].dim() > 0 else 0
        if batch > io.max_batch_size > 0:  # every tensor has the batch axis at dim 0 (ModelIO.from_graph)
            count = -(-batch // io.max_batch_size)
            split = [torch.tensor_split(t, count, dim=0) for t in tensors]
            parts = [[pieces[i] for pieces in split] for i in range(count)]
        requests = []
        for part in parts:
            self._check(io, part)
            requests.append(self._request(io, part))
        return PreparedCall(io, requests)

    @staticmethod
    def _check(io: ModelIO, tensors: list[torch.Tensor]) -> None:
        """Refuse a request that breaks the artifact's input contract before it travels, with a hint."""
        violations = io.contract.shape_violations([tuple(t.shape) for t in tensors])
        if violations:
            batch = f" (max_batch_size {io.max_batch_size})" if io.max_batch_size else ""
            raise GraphSpecMismatchError(
                f"{io.model_name}: the call does not fit the exported shapes{batch}: {'; '.join(violations)}. Record "
                "calls of this size (or declare DynamicDim/BatchDim ranges), tune and export again."
            )
        bad_values = io.contract.value_violations(tensors)
        if bad_values:
            raise IndexOutOfRangeError(f"{io.model_name}: {'; '.join(bad_values)}.{INDEX_HINT}")

    @staticmethod
    def _request(io: ModelIO, tensors: list[torch.Tensor]) -> TritonRequest:
        inputs = []
        for tensor_io, tensor in zip(io.inputs, tensors):
            array = wire_array(tensor)
            array = array.reshape(io.wire_shape(tensor_io, array.shape))
            # A graph model served by a Triton backend of its own names tensors as its artifact does.
            inputs.append((io.served_names.get(tensor_io.name, tensor_io.name), array, tensor_io.client_datatype))
        outputs = [io.served_names.get(t.name, t.name) for t in io.outputs]
        return TritonRequest(io.model_name, str(io.version), inputs, outputs)

    def rebuild(self, prepared: PreparedCall, answers: list[Callable[[str], np.ndarray]]) -> Any:
        """The module's outputs from the answers of ``prepared``'s requests, in their order.

        Args:
            prepared: What :meth:`prepare` returned.
            answers: Per request, a function giving an output array by tensor name (``result.as_numpy``).
        """
        io = prepared.io
        tensors = []
        for tensor_io in io.outputs:
            name = io.served_names.get(tensor_io.name, tensor_io.name)
            arrays = [np.array(answer(name), copy=True) for answer in answers]
            array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            if tensor_io.carried_as_column:  # the trailing axis of size 1 exists on the wire only
                array = array.reshape(array.shape[:-1])
            tensors.append(torch_tensor(array, tensor_io.dtype))
        treespec = self._treespec(io)
        if treespec is not None:
            try:
                return rebuild_output(treespec, io.output_template, tensors)
            except OutputStructureError:
                raise
            except Exception as error:  # the container type's own unflatten failed (another package version, say)
                self._fall_back(io, f"Cannot rebuild the module's output structure here ({type(error).__name__}: {error}).")
        return flat_output(io.output_paths, io.output_template, tensors)

    def _treespec(self, io: ModelIO) -> Any:
        """The graph spec's output structure, or None when its outputs come back flat."""
        if io.graph not in self._treespecs:
            treespec = None
            if self.output_structure == "module":
                try:
                    treespec = treespec_from_json(io.output_treespec)
                except UnknownOutputTypeError as error:
                    self._fall_back(io, str(error))
            self._treespecs[io.graph] = treespec
        return self._treespecs[io.graph]

    def _fall_back(self, io: ModelIO, reason: str) -> None:
        """Return ``io``'s outputs flat from now on, with one warning that says why."""
        warn(
            f"RemoteModule {self.model_name!r} {io.graph}: {reason} Its outputs are returned as a dict {{leaf path: "
            "tensor} instead (pass output_structure='flat' to ask for that and silence this)."
        )
        self._treespecs[io.graph] = None


def check_arguments(protocol: str, output_structure: str) -> None:
    """Refuse a protocol or output structure RemoteModule does not know, naming the argument."""
    if protocol not in ("grpc", "http"):
        raise InvalidArgumentError(f"protocol: expected 'grpc' or 'http', got {protocol!r}")
    if output_structure not in ("module", "flat"):
        raise InvalidArgumentError(
            f"output_structure: expected 'module' (the module's own output containers) or 'flat' (a dict keyed "
            f"by leaf path), got {output_structure!r}"
        )
