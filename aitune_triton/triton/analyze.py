"""``analyze_config``: Triton Model Analyzer configurations and ``perf_analyzer`` command lines for a repository.

Per entry model (a BLS router, see :mod:`aitune_triton.triton.exporter`) one Model Analyzer
profile configuration: ``model_repository``, ``profile_models`` with the entry model and its
``perf_analyzer_flags`` (``shape``: one ``NAME:d0,d1,...`` per input, the largest shape of the
graph spec's recorded ranges, as the entry model takes full shapes with ``max_batch_size: 0``;
``input-data: zero`` when an input is an integer tensor, since random ids may lie past an
embedding table), ``cpu_only`` when every graph model runs KIND_CPU instances, and
``bls_composing_models``: the graph models the router calls. From the Model Analyzer config docs:
the ``shape`` flag must be given for inputs with variable-sized dims, and ``perf_analyzer_flags``
keys use ``-`` rather than ``_``. From the perf_analyzer CLI docs: ``-m``, ``--shape
NAME:DIMS`` (once per input) and ``--bls-composing-models=modelA:3,modelB`` (a version after a
colon).

The entry model routes a request by the inputs present, and perf_analyzer sends every input the
configuration declares (Triton's optional inputs are not left out), so the shapes are those of the
graph spec with the most inputs: the profile exercises that graph model. The others can be
profiled directly (``perf_analyzer -m NAME.graph_N``). A module with one graph spec exported
without a router is its own entry model: no composing models, and per-sample shapes (perf_analyzer
``--shape`` leaves out the batch axis of a model with ``max_batch_size > 0``).

The command lines carry ``-u <host:http_port>`` (or ``-i grpc -u <host:grpc_port>``): ``aitune-triton
serve`` picks free ports unless told which, and prints the addresses it listens on, so the URL is a
placeholder to fill in (perf_analyzer's own default, ``localhost:8000``, is rarely right).
:data:`PERF_ANALYZER_INSTALL` says where perf_analyzer comes from.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.served.routes import ROUTES_PARAMETER, Routes, RoutesError
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.io import ModelIO

__all__ = ["PERF_ANALYZER_INSTALL", "PROTOCOLS", "AnalyzerConfig", "analyze_config"]

#: The protocols perf_analyzer speaks to Triton (its ``-i``), each with the URL placeholder of its ``-u``.
PROTOCOLS = {"http": "<host:http_port>", "grpc": "<host:grpc_port>"}

#: Where perf_analyzer comes from. It is not among aitune-triton's dependencies. The tritonclient 2.51.0
#: wheel for x86_64 Linux ships the binary as ``bin/perf_analyzer`` (its file list); the 2.73 wheel
#: installed here holds none and declares a ``perf-analyzer`` extra instead, whose package pip resolved
#: on this project's machines (Python 3.11, x86_64 Linux) only to a 0.1.0 placeholder without a binary.
#: NVIDIA's Triton SDK container ships perf_analyzer too.
PERF_ANALYZER_INSTALL = (
    "perf_analyzer is not installed with aitune-triton (nor in the tritonclient 2.73 wheel): the tritonclient 2.51.0 "
    "wheel for x86_64 Linux ships it in the environment's bin/ (pip install tritonclient==2.51.0, in a separate "
    "virtual environment), and so does NVIDIA's Triton SDK container (tritonserver:<YY.MM>-py3-sdk on NGC). "
    "Replace the -u placeholder with the address `aitune-triton serve` prints."
)

_INTEGER_TYPES = ("TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64")


@dataclass(frozen=True)
class AnalyzerConfig:
    """The profile setup of one entry model.

    Attributes:
        entry_model: The entry (BLS router) model to profile.
        graph_model: The graph model the shapes route to.
        shapes: Input name -> the shape perf_analyzer sends (the largest recorded; full shape).
        composing_models: ``name:version`` of every graph model the router calls (the versions
            its routes pin).
        config: The Model Analyzer configuration (what the YAML file holds).
        path: Where the YAML file was written, or None.
        protocol: ``"http"`` or ``"grpc"``: the protocol of the perf_analyzer command line (its ``-i``),
            with ``-u`` the placeholder of that endpoint's address (:data:`PROTOCOLS`).
    """

    entry_model: str
    graph_model: str
    shapes: dict[str, list[int]]
    composing_models: list[str]
    config: dict[str, Any]
    path: Path | None = None
    protocol: str = "http"

    @property
    def perf_analyzer_args(self) -> list[str]:
        """The equivalent ``perf_analyzer`` argument list."""
        args = ["perf_analyzer", "-m", self.entry_model]
        if self.protocol != "http":  # perf_analyzer's default protocol
            args += ["-i", self.protocol]
        args += ["-u", PROTOCOLS[self.protocol]]
        for name, shape in self.shapes.items():
            args += ["--shape", f"{name}:{','.join(str(d) for d in shape)}"]
        if self.config["profile_models"][self.entry_model]["perf_analyzer_flags"].get("input-data") == "zero":
            args += ["--input-data", "zero"]
        if self.composing_models:  # a single-graph module exported without a router calls no other model
            args.append(f"--bls-composing-models={','.join(self.composing_models)}")
        return args

    @property
    def perf_analyzer_command(self) -> str:
        """:attr:`perf_analyzer_args` as a shell command line."""
        return shlex.join(self.perf_analyzer_args)

    def yaml(self) -> str:
        """The configuration as YAML: block style with PyYAML when it is installed, else as JSON
        (which YAML 1.2 parsers, Model Analyzer's PyYAML included, read as YAML)."""
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            return json.dumps(self.config, indent=2) + "\n"
        return str(yaml.safe_dump(self.config, sort_keys=False))


def _entry_models(repository: Path) -> list[tuple[str, Routes]]:
    found = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()):
        try:
            config = read_model_config(model_dir / "config.pbtxt")
        except text_format.ParseError:
            continue  # `aitune-triton check` reports it
        if ROUTES_PARAMETER in config.parameters:
            try:
                found.append((model_dir.name, Routes.from_json(config.parameters[ROUTES_PARAMETER].string_value)))
            except RoutesError as error:
                raise InvalidArgumentError(
                    f"{model_dir.name}: its {ROUTES_PARAMETER!r} parameter cannot be read ({error}); "
                    "export the module again (aitune-triton check reports what else is wrong)."
                ) from None
    return found


def _cpu_only(repository: Path, graph_models: list[str]) -> bool:
    for name in graph_models:
        try:
            config = read_model_config(repository / name / "config.pbtxt")
        except (OSError, text_format.ParseError):
            return False
        if any(group.kind != mc.ModelInstanceGroup.KIND_CPU for group in config.instance_group):
            return False
    return True


def _profile(repository: Path, entry: str, routes: Routes) -> AnalyzerConfig:
    ios = [ModelIO.from_dict(dict(route.io)) for route in routes.graphs]
    if not ios:
        raise InvalidArgumentError(f"{entry}: its routes list no graph model; export the module again.")
    chosen = max(ios, key=lambda io: len(io.inputs))  # the first of the widest
    shapes = {t.name: list(ModelIO.wire_shape(t, tuple(high for _, high in t.ranges))) for t in chosen.inputs}
    direct = [io.model_name for io in ios] == [entry]  # the entry model runs its one graph spec itself
    if direct and chosen.max_batch_size > 0:
        # perf_analyzer's --shape leaves out the batch axis of a batching model (its -b sets the batch).
        shapes = {name: shape[1:] for name, shape in shapes.items()}
    composing = [] if direct else [f"{io.model_name}:{io.version}" for io in ios]
    flags: dict[str, Any] = {"shape": [f"{name}:{','.join(str(d) for d in shape)}" for name, shape in shapes.items()]}
    if any(t.data_type in _INTEGER_TYPES for t in chosen.inputs):
        flags["input-data"] = "zero"
    profile: dict[str, Any] = {"perf_analyzer_flags": flags}
    if _cpu_only(repository, [io.model_name for io in ios]):
        profile["cpu_only"] = True
    config = {
        "model_repository": str(repository),
        "profile_models": {entry: profile},
    }
    if not direct:
        config["bls_composing_models"] = ",".join(io.model_name for io in ios)
    return AnalyzerConfig(entry, chosen.model_name, shapes, composing, config)


def analyze_config(
    repository: str | Path, output_dir: str | Path | None = None, protocol: str = "http"
) -> list[AnalyzerConfig]:
    """Model Analyzer configurations (and perf_analyzer command lines) for every entry model.

    Args:
        repository: A model repository written by :func:`~aitune_triton.triton.exporter.export`.
        output_dir: Directory to write ``<entry model>.model_analyzer.yaml`` into (created when
            missing); None writes nothing. One file per entry model, since Model Analyzer takes
            ``bls_composing_models`` for the whole profile run.
        protocol: ``"http"`` (default) or ``"grpc"``: the protocol the perf_analyzer command lines use.

    Returns:
        One :class:`AnalyzerConfig` per entry model, sorted by name.

    Raises:
        InvalidArgumentError: ``repository`` is not a directory, holds no entry model, an entry
            model's routes parameter is not the routes JSON, ``output_dir`` is a file, or
            ``protocol`` is neither ``"http"`` nor ``"grpc"``.
    """
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}.")
    repository = Path(repository).absolute()
    if not repository.is_dir():
        raise InvalidArgumentError(f"repository: {repository} is not a directory; pass a model repository.")
    entries = _entry_models(repository)
    if not entries:
        raise InvalidArgumentError(
            f"repository: {repository} holds no entry model (a config.pbtxt with the {ROUTES_PARAMETER!r} parameter); "
            "export a tuned module into it first."
        )
    configs = [dataclasses.replace(_profile(repository, name, routes), protocol=protocol) for name, routes in entries]
    if output_dir is None:
        return configs
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise InvalidArgumentError(f"output_dir: {output} is a file; pass a directory (created when missing).")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for config in configs:
        path = output / f"{config.entry_model}.model_analyzer.yaml"
        path.write_text(config.yaml())
        written.append(dataclasses.replace(config, path=path))
    return written
