"""Inductor: a ``torch.export`` program (``program.pt2``) compiled with ``torch.compile`` where it is loaded.

:func:`check_program_archive`, :func:`load_program` and :func:`compile_program` are what
``aitune_triton.backends.inductor.InductorBackend`` uses in process too, so the served model
refuses, loads and compiles the program exactly as the tuned module does.
"""

from __future__ import annotations

import io
import json
import locale
import zipfile
from typing import Any, Sequence

import torch
import torch.fx.experimental._config as fx_config
import torch.utils._pytree as pytree
from torch.export.passes import move_to_device_pass  # ``import torch`` does not load it

from ..tensors import to_host, to_torch

__all__ = [
    "ProgramArchiveError",
    "Runtime",
    "check_program_archive",
    "compile_options",
    "compile_program",
    "load_program",
    "utf8_locale",
    "warmup_inputs",
]


class ProgramArchiveError(RuntimeError):
    """A ``program.pt2`` that is not a torch.export archive, or holds a payload that needs pickle."""


def utf8_locale() -> None:
    """Switch LC_CTYPE to UTF-8 when it is not: the Python backend stub's embedded Python gets no
    locale coercion, and Inductor reads its kernel templates with ``open()``'s default encoding
    (ASCII under ``LANG=C`` fails with UnicodeDecodeError at the first compile)."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


def check_program_archive(path: str) -> None:
    """Refuse a ``torch.export.save`` archive whose loading would unpickle anything but tensors.

    ``torch.export.load`` reads weights and constants from raw payloads, except entries marked
    ``use_pickle`` (tensor subclasses) and legacy ``.pt`` payloads, which it unpickles with
    ``weights_only=False``, and constants that are not tensors (script and opaque objects, read
    with ``pickle``); sample inputs are unpickled with ``weights_only=True`` and, when that fails,
    again without it. This check refuses the first three and loads the sample inputs with
    ``weights_only=True`` itself, so the fallback never runs.

    Args:
        path: The ``.pt2`` archive.

    Raises:
        ProgramArchiveError: the file is not a zip archive, or holds a payload that needs pickle.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ProgramArchiveError(f"inductor: {path} is not a torch.export archive ({error}); re-tune to rebuild it.") from None
    with archive:
        for name in archive.namelist():
            folder = name.split("/")
            if len(folder) >= 3 and folder[-3:-1] in (["data", "weights"], ["data", "constants"]) and name.endswith(".pt"):
                raise ProgramArchiveError(f"inductor: {path} holds the legacy pickled payload {name}; re-export it with this version.")
            if name.endswith("_config.json") and "/data/" in f"/{name}":
                config = json.loads(archive.read(name)).get("config", {})
                pickled = sorted(
                    key
                    for key, entry in config.items()
                    if entry.get("use_pickle") or ("constants" in name and not str(entry.get("path_name", "")).startswith("tensor_"))
                )
                if pickled:
                    raise ProgramArchiveError(
                        f"inductor: {path} stores {pickled} as pickles (tensor subclasses, script or opaque objects), which "
                        "torch.export.load would unpickle without weights_only; this backend loads plain tensors only."
                    )
            if "/data/sample_inputs/" in f"/{name}" and archive.getinfo(name).file_size > 0:  # empty: none saved
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as error:
                    raise ProgramArchiveError(
                        f"inductor: {path}: {name} does not load with weights_only=True ({type(error).__name__}); refusing it."
                    ) from None


def load_program(path: str, device: torch.device) -> torch.export.ExportedProgram:
    """The exported program at ``path`` (after :func:`check_program_archive`), its weights on ``device``.

    Raises:
        ProgramArchiveError: see :func:`check_program_archive`.
    """
    check_program_archive(path)
    program = torch.export.load(str(path))
    tensors = pytree.tree_leaves((program.state_dict, program.constants))
    if any(t.device != device for t in tensors if isinstance(t, torch.Tensor)):
        program = move_to_device_pass(program, device)
    return program


def compile_options(mode: str | None, freezing: bool) -> dict[str, Any]:
    """The Inductor config ``torch.compile(options=...)`` gets: ``mode``'s settings plus ``freezing``.

    ``torch.compile`` takes either ``mode`` or ``options``; the mode's settings
    (``torch._inductor.list_mode_options``) are merged here so both apply.
    """
    options = dict(torch._inductor.list_mode_options(mode or "default")) if mode not in (None, "default") else {}
    options["freezing"] = bool(freezing)
    return options


def warmup_inputs(program: torch.export.ExportedProgram, device: torch.device) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Zero tensors that fit ``program``'s inputs, and per input its dynamic axes.

    Each dynamic axis gets the smallest size of its range that is at least 2 (a size of 1 would
    make ``torch.compile`` specialise); axes that share a symbol get the same size. Zeros are valid
    rows of any embedding table.
    """
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    sizes: dict[Any, int] = {}
    for symbol, bounds in program.range_constraints.items():
        low = int(bounds.lower)
        try:
            high = int(bounds.upper)
        except (TypeError, ValueError, OverflowError):  # unbounded (int_oo)
            high = max(low, 2)
        sizes[symbol] = min(max(low, 2), high)
    tensors, dynamic = [], []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        shape, axes = [], []
        for axis, size in enumerate(value.shape):
            if isinstance(size, torch.SymInt):
                expr = size.node.expr
                shape.append(int(expr.xreplace({s: sizes.get(s, 2) for s in expr.free_symbols})))
                axes.append(axis)
            else:
                shape.append(int(size))
        tensors.append(torch.zeros(shape, dtype=value.dtype, device=device))
        dynamic.append(axes)
    return tensors, dynamic


def compile_program(program: torch.export.ExportedProgram, device: torch.device, options: dict[str, Any]) -> Any:
    """``torch.compile`` of ``program.module()`` with the backend's stored ``options`` (``mode``,
    ``dynamic``, ``fullgraph``, ``freezing``), compiled once on zero inputs (:func:`warmup_inputs`).

    Dynamic axes are marked with ``torch._dynamo.mark_dynamic`` (unless ``dynamic`` is False) and
    compiled with ``backed_size_oblivious``, so one graph serves every size in the range, size 1
    included.

    Raises:
        Exception: whatever ``torch.compile`` raised on the warm-up call.
    """
    compiled = torch.compile(
        program.module(),
        backend="inductor",
        dynamic=options.get("dynamic"),
        fullgraph=options.get("fullgraph", True),
        options=compile_options(options.get("mode"), bool(options.get("freezing"))),
    )
    tensors, dynamic = warmup_inputs(program, device)
    if options.get("dynamic") is not False:
        for tensor, axes in zip(tensors, dynamic):
            for axis in axes:
                torch._dynamo.mark_dynamic(tensor, axis)
    with fx_config.patch(backed_size_oblivious=True), torch.no_grad():  # type: ignore[attr-defined]
        compiled(*tensors)
    return compiled


class Runtime:
    """The exported program compiled (:func:`compile_program`) on the instance's device."""

    def __init__(self, path: str, gpu: bool, device_id: int, options: dict[str, Any]) -> None:
        utf8_locale()
        self.device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
        self.compiled: Any = compile_program(load_program(path, self.device), self.device, options)

    def run(self, values: Sequence[Any]) -> list[Any]:
        """Outputs (host values) of the compiled program on ``values`` (host values in input order)."""
        with torch.no_grad():
            outputs = self.compiled(*[to_torch(value, self.device) for value in values])
        return [to_host(output) for output in outputs]

    def close(self) -> None:
        """Drop the compiled program."""
        self.compiled = None
