"""The entry (router) model: routes each request to the graph model whose input names are exactly
the inputs present in the request, with BLS (business logic scripting), and returns its outputs.

The routes (each graph model's version and IO mapping) are this version's ``routes.json`` (the
model configuration's ``aitune_triton.routes`` parameter for older exports). Tensors keep the
module's own shapes here (a 0-d one travels as [1]); a [batch] tensor, which a batching graph
model declares as dims [1] reshaped to [], gets that trailing axis on the way in and loses it on
the way out. ``execute()`` is a coroutine, so the requests of one call wait on their graph models
together; several instances of this model let requests of different calls reach the graph models
together, where the dynamic batcher can join them.

Errors that the client causes (no graph model takes the inputs present, a size outside the
exported range, a batch above max_batch_size, axes the artifact needs equal that differ, token ids
past an embedding table, a padded graph model's mask or pad positions) are answered with INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT), checked
here with each graph model's input contract before the request travels: the error of a BLS
response carries only its message (its code is INTERNAL whatever the graph model said), so a graph
model's answer cannot tell the client's fault from the server's. Errors from the graph model are
passed on as they come; a failure here is INTERNAL.

A graph model served by one of Triton's own backends (export target "native") uses its artifact's
tensor names (input_0, INPUT__0...): its route's ``served_names`` maps the names here to those,
and tensors are renamed on the way in and back on the way out.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Callable

from .contract import InputContract
from .padding import PaddingLayout, request_problem
from .routes import ROUTES_FILE, ROUTES_PARAMETER, Route, Routes
from .tensors import host_value

__all__ = ["ROUTES_FILE", "ROUTES_PARAMETER", "Router", "read_routes"]


def read_routes(args: dict[str, str]) -> Routes:
    """This version's routes: ``routes.json`` beside model.py, else the configuration's parameter
    (config.pbtxt is shared by every version and holds the newest export's)."""
    version_dir = os.path.join(args["model_repository"], args["model_version"])
    return Routes.read(version_dir, json.loads(args["model_config"]))


class Router:
    """The ``TritonPythonModel`` logic of an entry model.

    Args:
        pb_utils: The Python backend's ``triton_python_backend_utils`` module (or a stand-in).
        args: The ``initialize()`` arguments Triton passes.
    """

    def __init__(self, pb_utils: Any, args: dict[str, str]) -> None:
        self.pb_utils = pb_utils
        routes = read_routes(args)
        self.model_name = args["model_name"]
        self.routes: dict[frozenset[str], list[Route]] = {}  # input names -> graph models taking exactly them
        for route in routes.graphs:
            self.routes.setdefault(route.input_names, []).append(route)
        self.input_names = sorted({name for names in self.routes for name in names})
        self.contracts = {route.model_name: InputContract.from_io(dict(route.io)) for route in routes.graphs}
        # The padded graph models' own request checks (a 0/1 mask, pad values at pad positions), run
        # here too: an INVALID_ARG from the graph model would come back through BLS as INTERNAL.
        self.paddings = {
            route.model_name: PaddingLayout.from_dict(route.padding) for route in routes.graphs if route.padding
        }

    async def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; never raises."""
        return list(await asyncio.gather(*[self.route(request) for request in requests]))

    async def route(self, request: Any) -> Any:
        """The response to one request (a bug here answers this request, not the others of the call)."""
        try:
            return await self.forward(request)
        except Exception as error:
            return self.error(f"{self.model_name}: {type(error).__name__}: {error}", self.pb_utils.TritonError.INTERNAL)

    def error(self, message: str, code: int) -> Any:
        """An error response with ``message`` and the ``TritonError`` ``code`` (INVALID_ARG, INTERNAL)."""
        return self.pb_utils.InferenceResponse(error=self.pb_utils.TritonError(message, code))

    def renamed(self, tensor: Any, name: str, dtype: str) -> Any:
        """``tensor`` under another name; through DLPack when it is in GPU memory (a native model's
        output) or bfloat16 (numpy has none)."""
        if tensor.is_cpu() and dtype != "bfloat16":
            return self.pb_utils.Tensor(name, tensor.as_numpy())
        return self.pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack())

    def reshaped(self, tensor: Any, name: str, dtype: str, shape: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Any:
        """``tensor`` under ``name`` with the shape ``shape(old shape)`` (a [batch] tensor's column axis)."""
        value = host_value(tensor, dtype)
        value = value.reshape(shape(tuple(value.shape)))
        if dtype == "bfloat16":
            import torch.utils.dlpack

            return self.pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))
        return self.pb_utils.Tensor(name, value)

    def choose(self, present: dict[str, Any]) -> tuple[Route | None, str]:
        """The graph model taking exactly the inputs ``present``, or None and why none fits."""
        candidates = self.routes.get(frozenset(present), [])
        if len(candidates) == 1:
            return candidates[0], ""
        if candidates:
            models = ", ".join(f"{route.model_name} {route.constants}" for route in candidates)
            return None, (f"{self.model_name}: inputs {sorted(present)} fit several graph models that differ only in "
                          f"constant arguments ({models}); call one of them directly, or use RemoteModule")
        expected = "; ".join(sorted(", ".join(sorted(names)) for names in self.routes))
        return None, f"{self.model_name}: no graph model takes inputs {sorted(present)}; expected one of: {expected}"

    async def forward(self, request: Any) -> Any:
        """Check ``request`` against its graph model's contract, call that model with BLS, answer with its outputs."""
        pb_utils = self.pb_utils
        present = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                present[name] = tensor
        graph, why = self.choose(present)
        if graph is None:
            return self.error(why, pb_utils.TritonError.INVALID_ARG)
        values = [host_value(present[t["name"]], t["dtype"]) for t in graph.inputs]
        problems = self.contracts[graph.model_name].violations(values)
        padding = self.paddings.get(graph.model_name)
        if not problems and padding is not None:
            problem = request_problem(padding, values)
            problems = [problem] if problem else []
        if problems:
            return self.error(f"{graph.model_name}: {'; '.join(problems)}", pb_utils.TritonError.INVALID_ARG)
        column = graph.max_batch_size > 0  # tensors without dims travel as [batch, 1] to that graph model
        served = graph.served_names  # names here -> the graph model's own (a native model's)
        inputs = []
        for tensor in graph.inputs:
            value = present[tensor["name"]]
            if column and not tensor["dims"]:
                value = self.reshaped(value, tensor["name"], tensor["dtype"], lambda shape: shape + (1,))
            if tensor["name"] in served:
                value = self.renamed(value, served[tensor["name"]], tensor["dtype"])
            inputs.append(value)
        inference = pb_utils.InferenceRequest(
            model_name=graph.model_name,
            model_version=graph.version,
            requested_output_names=[served.get(tensor["name"], tensor["name"]) for tensor in graph.outputs],
            inputs=inputs,
        )
        result = await inference.async_exec()
        if result.has_error():
            return pb_utils.InferenceResponse(error=result.error())  # its message already names the graph model; its code stays
        outputs = []
        for tensor in graph.outputs:
            value = pb_utils.get_output_tensor_by_name(result, served.get(tensor["name"], tensor["name"]))
            if column and not tensor["dims"]:
                value = self.reshaped(value, tensor["name"], tensor["dtype"], lambda shape: shape[:-1])
            elif tensor["name"] in served:
                value = self.renamed(value, tensor["name"], tensor["dtype"])
            outputs.append(value)
        return pb_utils.InferenceResponse(output_tensors=outputs)
