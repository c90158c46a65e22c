"""Checkpoints: a directory with ``manifest.json`` and the backends' artifacts.

A checkpoint holds one or more tuned :class:`~aitune_triton.Module` descriptions, each under the
attribute path where it sits in the saved object (``""`` for a Module saved on its own,
``"encoder"``, ``"text_encoder.layer.0"``, ``"unet"`` in a pipeline). Layout::

    CHECKPOINT/
      manifest.json          format, library versions, the tuned module descriptions, file hashes
      graph_0/model.onnx     artifacts of a Module saved on its own, one folder per graph spec
      modules/NAME/graph_0/model.pt2
                             artifacts of the wrapped submodule stored under the Module name NAME

The manifest is JSON and artifacts are ONNX models and AOTInductor packages: loading unpickles
nothing. But an AOTInductor package holds compiled native code (a shared library) that runs when
it is loaded, as any compiled model does: load only checkpoints you trust. Every artifact's
SHA-256 and size are checked against the manifest before it is loaded; that detects corruption
and truncation, not tampering by someone who can also edit the manifest. Save, load and export
also check that each artifact is of the kind its backend builds, from its structure alone
(``Backend.artifact_problem``): a ``torch.save`` pickle put in place of a package is refused. A checkpoint is written
into a temporary sibling directory and renamed into place, so a failed save leaves no
half-written checkpoint. Replacing a checkpoint (``overwrite=True``) swaps the new directory in
atomically where the OS allows it, so the path never lacks a complete checkpoint; staging
directories left by a killed save are removed by the next save or export next to them
(``aitune_triton._atomic``).

This module saves and loads modules (finding them, checking them, switching them to ``TUNED``,
undoing a failed load); the format itself (manifest, artifact hashes, reading a checkpoint back)
is :mod:`aitune_triton.checkpoint_manifest`, and finding wrapped submodules by attribute path is
:mod:`aitune_triton.module.submodules`; their public names are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, cast

import torch

from aitune_triton._atomic import make_staging_dir, replace_dir
from aitune_triton.checkpoint_manifest import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    SUBMODULES_DIR,
    StoredModule,
    copy_artifacts,
    new_manifest,
    read_checkpoint,
    read_checkpoint_modules,
)
from aitune_triton.errors import (
    AITuneTritonError,
    ArgumentTypeError,
    CheckpointError,
    InvalidArgumentError,
    InvalidStateDictError,
    ModuleStateError,
)
from aitune_triton.module.description import TunedDescription
from aitune_triton.module.persistence import check_artifact_kinds, checked_device
from aitune_triton.module.routing import live_wrapper_of, own_forward
from aitune_triton.module.state import ModuleState
from aitune_triton.module.submodules import no_wrapped_submodule_message, replace_at_path, resolve_path, wrapped_submodules
from aitune_triton.module.wrapper import Module
from aitune_triton.spec import ForwardSignature

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "SUBMODULES_DIR",
    "StoredModule",
    "load",
    "read_checkpoint",
    "read_checkpoint_modules",
    "save",
    "wrapped_submodules",
]


# ------------------------------------------------------------------------------------------- save
def save(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save tuned modules' graph specs, backend descriptions and artifacts to a directory.

    ``obj`` may be a tuned :class:`~aitune_triton.Module`, or a model or pipeline holding tuned
    wrapped submodules (found as :func:`wrapped_submodules` does): each is stored under its
    attribute path, with its artifacts in its own folder, in one checkpoint with one manifest.
    :func:`load` puts them back into a freshly built model or pipeline.

    Args:
        obj: A ``TUNED`` Module; a ``torch.nn.Module`` holding wrapped submodules; or an object
            with torch module attributes (a diffusers or transformers pipeline) holding them.
        path: Checkpoint directory to create.
        overwrite: Replace an existing checkpoint at ``path``: the new one is built completely
            first, then swapped in atomically (on Linux; elsewhere with two renames), and the old
            one removed.

    Returns:
        The checkpoint directory.

    Raises:
        ModuleStateError: ``obj`` is a Module that is not tuned, or holds a wrapped submodule that
            is not tuned (the message names each one's path and state). Nothing is written.
        InvalidArgumentError: ``obj`` holds no wrapped submodule.
        ArgumentTypeError: ``obj`` is neither a torch module nor an object with attributes.
        CheckpointError: ``path`` exists and ``overwrite`` is False, or is a file.
        ArtifactKindError: (a CheckpointError) an artifact is not of the kind its backend builds
            (replaced after tuning). Nothing is written.
    """
    path = Path(path).absolute()
    entries = _descriptions_to_save(obj)
    if path.exists() and (not overwrite or not path.is_dir()):
        raise CheckpointError(
            f"path: {path} already exists. Pass overwrite=True to replace it, or choose another directory."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(path.parent)
    try:
        files: dict[str, dict[str, Any]] = {}
        stored: list[tuple[str, TunedDescription]] = []
        for attribute_path, description in entries:
            folder = "" if not attribute_path else f"{SUBMODULES_DIR}/{description.name}/"
            copied, copied_files = copy_artifacts(description, staging, folder)
            stored.append((attribute_path, copied))
            files.update(copied_files)
        manifest = new_manifest(stored, files)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _descriptions_to_save(obj: Any) -> list[tuple[str, TunedDescription]]:
    if isinstance(obj, Module):
        if obj.state is not ModuleState.TUNED:
            obj.to_dict()  # raises ModuleStateError, as it always did
    found = wrapped_submodules(obj)
    if not found:
        raise InvalidArgumentError(no_wrapped_submodule_message(obj))
    untuned = [(p, m) for p, m in found if m.state is not ModuleState.TUNED]
    if untuned:
        listed = ", ".join(f"'{p}' (Module '{m.name}', state {m.state.name})" for p, m in untuned)
        raise ModuleStateError(
            f"obj: wrapped submodules that are not tuned: {listed}. Record calls and tune them before saving "
            "(module.tune(), or aitune_triton.tune(pipeline, dataset)), or leave one out by putting its original "
            "module back into the parent (model.encoder = model.encoder.module)."
        )
    described = [(p, TunedDescription.from_dict(m.to_dict())) for p, m in found]
    for _, description in described:
        check_artifact_kinds(description)
    return described


# ------------------------------------------------------------------------------------------- load
def load(
    obj: Any,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    name: str | None = None,
    *,
    device_map: Mapping[str, str | torch.device] | None = None,
) -> Any:
    """Load a checkpoint written by :func:`save` and put its modules back, tuned.

    A checkpoint of one Module saved on its own loads into that Module's torch module (wrapped
    under the checkpoint's name) or into a not-yet-tuned Module. A checkpoint of wrapped
    submodules loads into a model or pipeline built the same way: each stored attribute path is
    looked up in ``obj`` (as :func:`wrapped_submodules` walks it); a bare torch module there is
    wrapped under its stored name and the wrapper replaces it in its parent (so the parent calls
    it), a not-yet-tuned Module there is used as it is, and each is switched to ``TUNED``. Every
    stored submodule is checked first: when one cannot be loaded, ``obj`` is left as it was.

    Args:
        obj: For a single-Module checkpoint: the original ``torch.nn.Module`` or a not-yet-tuned
            :class:`~aitune_triton.Module`. For a checkpoint of submodules: the model or pipeline
            object holding them (bare or wrapped, not tuned).
        path: Checkpoint directory.
        device: Device to run every module on; default the device each backend was tuned for.
        name: For a single-Module checkpoint and a plain ``obj``: the new Module's name; default
            the checkpoint's, with a ``_2`` suffix (and a warning) when another live Module holds
            it. Submodules take their stored names (suffixed the same way when held).
        device_map: Attribute path (``"encoder"``; ``""`` for a Module saved on its own) ->
            device, overriding ``device`` for that module.

    Returns:
        For a single-Module checkpoint, the ``TUNED`` Module. For a checkpoint of submodules,
        ``obj`` (or, when the checkpoint also holds ``obj`` itself at path ``""`` and ``obj`` is
        a plain torch module, the new Module wrapping it).

    Raises:
        CheckpointError: see :func:`read_checkpoint`; also when a stored attribute path is
            missing in ``obj``.
        InvalidStateDictError: (a ValueError) a module in ``obj`` has another forward signature
            than the stored one (the message names its path).
        ModuleStateError: a Module to load into is already tuned.
        InvalidArgumentError: ``device_map`` names a path the checkpoint does not hold, a device
            is invalid or holds no data (``meta``: the message names it), ``name`` is given for a checkpoint of submodules, a bare submodule is
            wrapped by a live Module its parent does not hold, or an attribute path cannot be
            assigned the loaded Module (a read-only property).
        ArgumentTypeError: ``device`` is a dict (pass ``device_map=``).

    A failed load changes nothing in ``obj``: every submodule loaded before the failure is put
    back untuned, and no wrapper made for a bare submodule keeps routing or recording its calls.
    """
    manifest, entries = read_checkpoint_modules(path)
    devices = _devices([entry.path for entry in entries], device, device_map)
    if "module" in manifest:  # one Module saved on its own
        description = entries[0].description
        if isinstance(obj, Module):
            obj.load_tuned(description, devices[""])
            return obj
        return Module.from_dict(obj, description, devices[""], name=name)
    if name is not None:
        raise InvalidArgumentError(
            f"name: applies to a checkpoint of one Module saved on its own; {path} holds {len(entries)} wrapped "
            f"submodules, which keep their stored names ({', '.join(e.description.name for e in entries)}). Pass name=None."
        )
    plans = [_plan_load(obj, entry.path, entry.description, devices[entry.path]) for entry in entries]
    problems = [plan.problem for plan in plans if plan.problem is not None]
    if problems:
        kind = problems[0][0]
        listed = "; ".join(message for _, message in problems)
        raise kind(f"checkpoint {Path(path).absolute()}: nothing was loaded into {type(obj).__name__}: {listed}")
    _load_all(plans)
    _assign_all(obj, plans, path)
    root = next((plan.created for plan in plans if plan.path == "" and plan.created is not None), None)
    return root if root is not None else obj


def _devices(stored: list[str], device: Any, device_map: Mapping[str, Any] | None) -> dict[str, torch.device | None]:
    if isinstance(device, Mapping):
        raise ArgumentTypeError(
            "device: expected one device (a str or torch.device) or None, got a dict. Pass per-submodule devices as "
            "device_map={'encoder': 'cuda:0', ...}."
        )
    if device_map is not None and not isinstance(device_map, Mapping):
        raise ArgumentTypeError(f"device_map: expected a dict of attribute path -> device, got {type(device_map).__name__}")
    unknown = sorted(set(device_map or {}) - set(stored))
    if unknown:
        raise InvalidArgumentError(
            f"device_map: {unknown} are not attribute paths this checkpoint holds; it holds {stored} ('' is a Module "
            "saved on its own)."
        )
    chosen = {p: (device_map or {}).get(p, device) for p in stored}
    return {p: checked_device(d, f"device_map[{p!r}]" if p in (device_map or {}) else "device") for p, d in chosen.items()}


@dataclass
class _LoadPlan:
    path: str
    description: TunedDescription
    device: torch.device | None
    target: torch.nn.Module | None = None
    problem: tuple[type[AITuneTritonError], str] | None = None
    created: Module | None = None  # the wrapper made for a bare target
    loaded: bool = False  # an existing wrapper was switched to TUNED
    state_before: ModuleState | None = None


def _plan_load(obj: Any, path: str, description: TunedDescription, device: torch.device | None) -> _LoadPlan:
    """Find and check one stored submodule in ``obj`` without changing anything."""
    plan = _LoadPlan(path, description, device)
    where = f"'{path}'" if path else f"the {type(obj).__name__} itself"
    try:
        target = resolve_path(obj, path)
    except AttributeError as error:
        plan.problem = (CheckpointError, f"{where} (Module '{description.name}') is not in it ({error})")
        return plan
    plan.target = target
    stored = description.forward_signature
    if isinstance(target, Module):
        if target.state is ModuleState.TUNED:
            plan.problem = (ModuleStateError, f"{where} is the Module '{target.name}', which is already tuned (reset it "
                            "with enable_recording(force=True), or load into a freshly built object)")
            return plan
        signature = target.signature
    else:
        holder = live_wrapper_of(target)
        if holder is not None:
            plan.problem = (InvalidArgumentError, f"{where} is wrapped by the live Module '{holder.name}', which its "
                            "parent does not hold; assign that wrapper into the parent, or delete it")
            return plan
        signature = ForwardSignature.from_callable(own_forward(target))
    if signature != stored:
        plan.problem = (InvalidStateDictError, f"{where} ({type(target).__name__}) has a forward taking "
                        f"{signature.describe()}, but Module '{description.name}' was tuned for one taking "
                        f"{stored.describe()}; build the object the checkpoint was saved from")
    return plan


def _load_all(plans: list[_LoadPlan]) -> None:
    """Switch every planned module to TUNED; on any failure undo the ones done and re-raise."""
    try:
        for plan in plans:
            target = cast(torch.nn.Module, plan.target)  # every plan found its target (no problems)
            if isinstance(target, Module):
                plan.state_before = target.state
                target.load_tuned(plan.description, plan.device)
                plan.loaded = True
            else:
                plan.created = Module.from_dict(target, plan.description, plan.device)
    except BaseException:
        _undo_all(plans)
        raise


def _undo_all(plans: list[_LoadPlan]) -> None:
    """Put every planned module back as it was before the load: untuned, bare ones unwrapped."""
    for plan in plans:
        if plan.loaded and isinstance(plan.target, Module):
            plan.target._undo_load(plan.state_before)
        plan.loaded = False
        if plan.created is not None:
            plan.created._undo_load(None)
        plan.created = None


def _assign_all(obj: Any, plans: list[_LoadPlan], path: str | os.PathLike) -> None:
    """Put each wrapper made for a bare submodule into its parent; when one cannot be assigned (a
    read-only property, say), put the bare modules back, undo every load and raise.

    Raises:
        InvalidArgumentError: an attribute path of ``obj`` cannot be assigned.
    """
    assigned: list[_LoadPlan] = []
    for plan in plans:
        if plan.created is None or not plan.path:
            continue
        try:
            replace_at_path(obj, plan.path, plan.created)
        except Exception as error:
            for done in assigned:
                replace_at_path(obj, done.path, cast(torch.nn.Module, done.target))
            _undo_all(plans)
            raise InvalidArgumentError(
                f"checkpoint {Path(path).absolute()}: nothing was loaded into {type(obj).__name__}: '{plan.path}' "
                f"cannot be assigned its loaded Module ({type(error).__name__}: {error}); make it a plain, assignable "
                "attribute of its parent"
            ) from error
        assigned.append(plan)
