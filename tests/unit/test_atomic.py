"""Staging directories that a killed process leaves behind, and replacing a directory in one step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aitune_triton import _atomic
from aitune_triton._atomic import STAGING_PREFIX, exchange, make_staging_dir, remove_stale_staging, replace_dir


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _staging(parent: Path, pid: int, tail: str = "abc123") -> Path:
    directory = parent / f"{STAGING_PREFIX}{pid}-{tail}"
    (directory / "graph_0").mkdir(parents=True)
    (directory / "graph_0" / "model.onnx").write_bytes(b"half written")
    return directory


def _directory(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(text)
    return path


def test_a_staging_directory_carries_the_pid_of_its_owner(tmp_path):
    staging = make_staging_dir(tmp_path)

    assert staging.parent == tmp_path and staging.is_dir()
    assert staging.name.startswith(f"{STAGING_PREFIX}{os.getpid()}-")


def test_stale_staging_of_a_dead_process_or_older_than_the_limit_is_removed_and_the_rest_kept(tmp_path):
    dead = _staging(tmp_path, dead_pid())
    alive = _staging(tmp_path, os.getpid(), "fresh")
    old = _staging(tmp_path, os.getpid(), "old")
    hours_ago = time.time() - _atomic.STALE_AFTER_S - 60
    os.utime(old, (hours_ago, hours_ago))
    foreign = [_directory(tmp_path / name, "{}") for name in (".aitune_triton-staging-x-1", "checkpoint", ".other-123-x")]

    removed = remove_stale_staging(tmp_path)

    assert sorted(removed) == sorted([dead, old])
    assert not dead.exists() and not old.exists()
    assert alive.is_dir() and all(path.is_dir() for path in foreign)


def test_making_a_staging_directory_removes_the_one_a_dead_process_left(tmp_path):
    dead = _staging(tmp_path, dead_pid())

    make_staging_dir(tmp_path)

    assert not dead.exists()


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    first, second = _directory(tmp_path / "a", "first"), _directory(tmp_path / "b", "second")

    assert exchange(first, second) is True  # this Linux machine has renameat2(RENAME_EXCHANGE)

    assert (first / "manifest.json").read_text() == "second"
    assert (second / "manifest.json").read_text() == "first"


def test_exchange_of_a_missing_path_raises_and_moves_nothing(tmp_path):
    first = _directory(tmp_path / "a", "first")

    with pytest.raises(FileNotFoundError, match="renameat2"):
        exchange(first, tmp_path / "missing")

    assert (first / "manifest.json").read_text() == "first"


def _watch_every_step(monkeypatch, path: Path) -> list[str]:
    """After every rename, exchange and removal replace_dir makes, note what ``path`` holds."""
    seen: list[str] = []

    def note() -> None:
        seen.append((path / "manifest.json").read_text() if (path / "manifest.json").is_file() else "ABSENT")

    def watched(function):
        def step(*args, **kwargs):
            result = function(*args, **kwargs)
            note()
            return result
        return step

    monkeypatch.setattr(_atomic.os, "rename", watched(os.rename))
    monkeypatch.setattr(_atomic, "exchange", watched(_atomic.exchange))
    monkeypatch.setattr(_atomic.shutil, "rmtree", watched(_atomic.shutil.rmtree))
    return seen


def test_replace_dir_keeps_a_complete_directory_at_the_path_after_every_step(tmp_path, monkeypatch):
    path = _directory(tmp_path / "checkpoint", "old")
    new = make_staging_dir(tmp_path)
    (new / "manifest.json").write_text("new")
    seen = _watch_every_step(monkeypatch, path)

    replace_dir(new, path)

    assert seen and "ABSENT" not in seen
    assert seen[-1] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # the old one is gone


def test_replace_dir_without_exchange_falls_back_to_two_renames_and_still_replaces(tmp_path, monkeypatch):
    path = _directory(tmp_path / "checkpoint", "old")
    new = _directory(tmp_path / f"{STAGING_PREFIX}{os.getpid()}-new", "new")
    monkeypatch.setattr(_atomic, "exchange", lambda first, second: False)

    replace_dir(new, path)

    assert (path / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_replace_dir_onto_a_missing_path_renames(tmp_path):
    new = _directory(tmp_path / f"{STAGING_PREFIX}{os.getpid()}-new", "new")

    replace_dir(new, tmp_path / "checkpoint")

    assert (tmp_path / "checkpoint" / "manifest.json").read_text() == "new"
    assert not new.exists()
