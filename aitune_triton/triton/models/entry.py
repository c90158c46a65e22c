"""The entry model: what a client calls for a module (RemoteModule reads its routes).

Either a BLS router (``router_model.py.j2``, :mod:`aitune_triton.served.router`) in front of the
module's graph models, pinning the graph model versions it was exported with, or, for a module with
one graph spec exported without a router, that graph model itself, named after the module and
carrying the same routes parameter.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from aitune_triton._versions import aitune_version
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.module.description import TunedDescription
from aitune_triton.served.routes import ROUTES_FILE, Routes
from aitune_triton.triton.config import TritonModelOptions, router_model_config, set_routes_parameter
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.manifest import ModelKind
from aitune_triton.triton.models.planned import PACKAGE_DIR, PlannedModel, next_version
from aitune_triton.triton.targets import ExportTargetBase

__all__ = ["KEEP_ROUTER", "make_direct_entry", "plan_router_model", "routes_of", "use_router"]

#: What an error about ``router=False`` says to do; the command line says it with its options.
KEEP_ROUTER = "Pass router=None or True."


def use_router(description: TunedDescription, target: ExportTargetBase, router: bool | None) -> bool:
    """Whether ``description`` gets an entry (router) model in front of its graph models.

    Raises:
        InvalidArgumentError: ``router`` is False where a router is needed.
    """
    graphs = len(description.graphs)
    if router is None:
        return graphs != 1 or not target.checks_input_contract
    if not router and graphs != 1:
        raise InvalidArgumentError(
            f"router: False needs a module with one graph spec; '{description.name}' has {graphs}, which the entry "
            f"model routes between. {KEEP_ROUTER}"
        )
    if not router and not target.checks_input_contract:
        raise InvalidArgumentError(
            f"router: False needs target='python'; a {target.name} graph model does not check its input contract "
            f"itself, so the entry model in front of it does. {KEEP_ROUTER}"
        )
    return router


def routes_of(description: TunedDescription, name: str, ios: list[ModelIO]) -> Routes:
    """The entry model ``name``'s routes to the graph models of ``ios``."""
    return Routes.build(name, description.signature, description.strict, [io.to_dict() for io in ios])


def make_direct_entry(model: PlannedModel, routes: Routes, graph_name: str) -> PlannedModel:
    """Turn a module's one graph model into its entry model (no router): it gets the routes parameter."""
    set_routes_parameter(model.config, routes)
    model.kind = ModelKind.ENTRY
    model.serving.router = False
    model.summary = f"entry model running {graph_name} itself (no router), {model.summary}"
    return model


def plan_router_model(
    name: str, routes: Routes, ios: list[ModelIO], options: TritonModelOptions, repository: Path, version: int | None,
    environment: jinja2.Environment, package: dict[str, str],
) -> PlannedModel:
    """The router entry model ``name`` in front of the graph models of ``ios``.

    Its routes pin each graph model's version: if an interrupted export left newer graph models
    behind an older entry model, requests fail loudly instead of reaching a graph model whose
    inputs the entry model does not know.

    Raises:
        ExportError: two graph specs use one tensor name with different dtypes or ranks.
        InvalidOptionError: ``version`` exists already.
    """
    router_py = environment.get_template("router_model.py.j2").render(
        version=aitune_version(), module_name=name, graph_models=[io.model_name for io in ios], package_dir=PACKAGE_DIR
    )
    return PlannedModel(
        name=name,
        version=next_version(repository / name, version),
        config=router_model_config(name, ios, routes, options),
        files={"model.py": router_py, ROUTES_FILE: routes.to_json() + "\n", **package},
        artifact=None,
        summary=f"entry model routing to {len(ios)} graph model(s)",
        kind=ModelKind.ENTRY,
    )
