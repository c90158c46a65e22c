"""The routes of an entry model: the module's forward signature and each graph model it routes to.

One type (:class:`Routes`) writes and reads the routes JSON wherever it travels: the exporter
writes it as the entry model's ``aitune_triton.routes`` configuration parameter and as each entry
model version's ``routes.json``; the router (:mod:`.router`), ``RemoteModule``, ``aitune-triton
check`` and ``analyze-config`` read it. The JSON is unchanged since the first exports::

    {"module": "minilm", "signature": [...], "strict": true,
     "graphs": [{"model_name": "minilm.graph_0", "version": 1, "inputs": [...], ...}]}

Each ``graphs`` item is a graph model's IO mapping (``ModelIO.to_dict()``, the model's ``io.json``),
kept as it is in :attr:`Route.io`. This module runs inside Triton's Python backend too, so it
imports only the standard library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ROUTES_FILE", "ROUTES_PARAMETER", "Route", "Routes", "RoutesError"]

#: Configuration parameter holding the routes JSON: what makes a model an entry model.
ROUTES_PARAMETER = "aitune_triton.routes"
#: This version's routes, next to model.py (all versions of a model share one config.pbtxt, whose
#: routes parameter is the newest export's).
ROUTES_FILE = "routes.json"


class RoutesError(ValueError):
    """The routes JSON is missing, not JSON, or lacks a field it needs."""


@dataclass(frozen=True)
class Route:
    """One graph model an entry model routes to.

    Attributes:
        io: Its IO mapping as the routes hold it (``ModelIO.to_dict()``, equal to its ``io.json``).
    """

    io: Mapping[str, Any]

    @property
    def model_name(self) -> str:
        """The graph model's name."""
        return str(self.io["model_name"])

    @property
    def version(self) -> int:
        """The graph model version the entry model pins."""
        return int(self.io["version"])

    @property
    def max_batch_size(self) -> int:
        """The graph model's ``max_batch_size`` (0: it does not batch)."""
        return int(self.io.get("max_batch_size", 0))

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """Input tensors (``name``, ``dtype``, ``dims``...), in the graph model's order."""
        return list(self.io["inputs"])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Output tensors, in the graph model's order."""
        return list(self.io["outputs"])

    @property
    def input_names(self) -> frozenset[str]:
        """The input tensor names: a request holding exactly these goes to this graph model."""
        return frozenset(str(tensor["name"]) for tensor in self.io["inputs"])

    @property
    def served_names(self) -> dict[str, str]:
        """Tensor name here -> the graph model's own name (a native model's); empty otherwise."""
        return dict(self.io.get("served_names") or {})

    @property
    def padding(self) -> dict[str, Any] | None:
        """The graph model's padding layout (``PaddingLayout.to_dict()``), or None."""
        padding = self.io.get("padding")
        return dict(padding) if padding else None

    @property
    def constants(self) -> dict[str, Any]:
        """The constant arguments the graph spec was recorded with (non-strict modules)."""
        return dict(self.io.get("constants") or {})


@dataclass(frozen=True)
class Routes:
    """An entry model's routes.

    Attributes:
        module: The module's name.
        signature: The module's forward signature (``ForwardSignature.to_dict()``).
        strict: Whether the module was recorded in strict mode (constants are part of a graph spec's key).
        graphs: The graph models, in export order.
    """

    module: str
    signature: list[Any]
    strict: bool
    graphs: tuple[Route, ...]

    @classmethod
    def build(cls, module: str, signature: list[Any], strict: bool, graphs: list[Mapping[str, Any]]) -> "Routes":
        """Routes of ``graphs`` (each a graph model's IO mapping, ``ModelIO.to_dict()``)."""
        return cls(module, list(signature), bool(strict), tuple(Route(dict(graph)) for graph in graphs))

    def to_dict(self) -> dict[str, Any]:
        """The routes JSON as a dict."""
        return {"module": self.module, "signature": list(self.signature), "strict": self.strict,
                "graphs": [dict(route.io) for route in self.graphs]}

    def to_json(self) -> str:
        """The routes JSON (one line, no trailing newline): the writer of every copy of it."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> "Routes":
        """Read the routes JSON's dict; ``module`` and ``signature`` default to empty, ``strict`` to True.

        Raises:
            RoutesError: ``data`` is not a dict whose ``graphs`` is a list of IO mappings, each
                with ``model_name``, ``version``, ``inputs`` and ``outputs``.
        """
        if not isinstance(data, dict):
            raise RoutesError(f"routes: expected a JSON object, got {type(data).__name__}")
        graphs = data.get("graphs")
        if not isinstance(graphs, list):
            raise RoutesError(f"routes: 'graphs' is {type(graphs).__name__}, expected a list of graph models")
        for index, graph in enumerate(graphs):
            missing = [key for key in ("model_name", "version", "inputs", "outputs") if not isinstance(graph, dict) or key not in graph]
            if missing:
                raise RoutesError(f"routes: graphs[{index}] lacks {missing}")
        return cls.build(str(data.get("module", "")), list(data.get("signature") or []), bool(data.get("strict", True)), graphs)

    @classmethod
    def from_json(cls, text: str) -> "Routes":
        """Read the routes JSON.

        Raises:
            RoutesError: ``text`` is not JSON, or not routes (:meth:`from_dict`).
        """
        try:
            data = json.loads(text)
        except ValueError as error:
            raise RoutesError(f"routes: not JSON ({error})") from None
        return cls.from_dict(data)

    @classmethod
    def from_config_json(cls, config: Mapping[str, Any]) -> "Routes | None":
        """The routes a model configuration carries, as JSON (Triton's ``get_model_config`` as
        JSON, the Python backend's ``model_config``); None when it has no routes parameter.

        Raises:
            RoutesError: the parameter is there but is not the routes JSON.
        """
        parameter = (config.get("parameters") or {}).get(ROUTES_PARAMETER)
        if parameter is None:
            return None
        return cls.from_json(parameter["string_value"])

    @classmethod
    def read(cls, version_dir: str, config: Mapping[str, Any]) -> "Routes":
        """An entry model version's routes: ``routes.json`` in ``version_dir``, else (exports
        older than that file) the configuration's parameter.

        Raises:
            RoutesError: neither holds routes.
        """
        routes_file = os.path.join(version_dir, ROUTES_FILE)
        if os.path.isfile(routes_file):
            with open(routes_file) as handle:
                return cls.from_json(handle.read())
        routes = cls.from_config_json(config)
        if routes is None:
            raise RoutesError(f"routes: neither {routes_file} nor the {ROUTES_PARAMETER!r} configuration parameter exists")
        return routes

    def input_sets(self) -> list[frozenset[str]]:
        """Each graph model's input names, in order."""
        return [route.input_names for route in self.graphs]
