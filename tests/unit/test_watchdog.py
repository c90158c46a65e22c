"""The stub watchdog's reload steps, driven with a stand-in client that fails where a real server can.

The watchdog against a real server (a killed stub, an aborting request) is tested in
tests/integration/test_served_contract.py; here each failure point of a reload is reached on purpose.
"""

from __future__ import annotations

import json
import os

from aitune_triton.triton.watchdog import StubWatchdog


class FlakyClient:
    """Records every model-control call; ``fail`` maps a call to how many times it raises first."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = dict(fail or {})

    def _step(self, name: str, *details: object) -> None:
        self.calls.append((name, *details))
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise ConnectionResetError(f"{name} failed")

    def is_model_ready(self, model: str) -> bool:
        self._step("ready")
        return True

    def get_model_repository_index(self, headers=None):
        self._step("index")
        return [{"name": "m", "version": "1", "state": "READY"}, {"name": "m", "version": "2", "state": "UNAVAILABLE"}]

    def get_model_config(self, model: str):
        self._step("config")
        return {"name": model, "backend": "python"}

    def unload_model(self, model: str, headers=None) -> None:
        self._step("unload", headers)

    def load_model(self, model: str, config=None, headers=None) -> None:
        self._step("load", json.loads(config)["version_policy"] if config else None)


def _watchdog() -> StubWatchdog:
    return StubWatchdog(os.getpid(), "127.0.0.1:1", control_token="secret", max_attempts=3)


def test_a_reload_unloads_then_loads_the_versions_the_model_served_with_the_control_header():
    watchdog, client = _watchdog(), FlakyClient()

    watchdog._reload(client, "m", 123)

    header = {StubWatchdog.CONTROL_HEADER: "secret"}
    assert client.calls == [("ready",), ("index",), ("config",), ("unload", header), ("load", {"specific": {"versions": [1]}})]
    assert [(model, pid) for model, pid, _ in watchdog.reloads] == [("m", 123)]


def test_a_reload_that_failed_before_the_unload_unloads_on_its_retry():
    watchdog, client = _watchdog(), FlakyClient(fail={"config": 1})

    watchdog._reload(client, "m", 123)
    assert watchdog.reloads == [] and watchdog._retry["m"][1:2] == (1,)
    watchdog._reload(client, "m", 123)  # the retry, when it is due

    assert [call[0] for call in client.calls] == ["ready", "index", "config", "index", "config", "unload", "load"]
    assert [(model, pid) for model, pid, _ in watchdog.reloads] == [("m", 123)]


def test_a_reload_that_failed_after_the_unload_only_loads_on_its_retry():
    watchdog, client = _watchdog(), FlakyClient(fail={"load": 2})  # the pinned load and the plain one after it

    watchdog._reload(client, "m", 123)
    assert watchdog.reloads == [] and watchdog._retry["m"][3] is True  # unloaded, not loaded
    watchdog._reload(client, "m", 123)

    assert [call[0] for call in client.calls] == ["ready", "index", "config", "unload", "load", "load", "load"]
    assert client.calls[-1] == ("load", {"specific": {"versions": [1]}})
    assert [(model, pid) for model, pid, _ in watchdog.reloads] == [("m", 123)]


def test_a_reload_gives_up_after_max_attempts_and_says_to_restart_the_server():
    lines: list[str] = []
    watchdog = StubWatchdog(os.getpid(), "127.0.0.1:1", log=lines.append, max_attempts=2)

    class Down(FlakyClient):
        def unload_model(self, model: str, headers=None) -> None:
            raise ConnectionRefusedError("server gone")

    client = Down()
    watchdog._reload(client, "m", 7)
    watchdog._reload(client, "m", 7)

    assert "m" not in watchdog._retry and watchdog.reloads == []
    assert "failed 2 times" in lines[-1] and "restart the server" in lines[-1]


def _stand_in_stub(tmp_path, model: str, version: int):
    """A child process whose command line reads as a Python-backend stub's (``<stub> <model>/<version>/model.py``)."""
    import subprocess
    import sys

    script = tmp_path / model / str(version) / "model.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import time\ntime.sleep(120)\n")
    return subprocess.Popen([str(tmp_path / "triton_python_backend_stub"), str(script)], executable=sys.executable)


def _wait_dead(process) -> None:
    import time

    from aitune_triton.triton.process import is_dead

    process.kill()
    deadline = time.monotonic() + 10
    while not is_dead(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_stubs_that_end_because_their_version_was_reloaded_are_not_crashes(tmp_path):
    lines: list[str] = []
    watchdog = StubWatchdog(os.getpid(), "127.0.0.1:1", log=lines.append)
    old = _stand_in_stub(tmp_path, "m", 1)
    other_version = _stand_in_stub(tmp_path, "m", 2)
    processes = [old, other_version]
    try:
        watchdog._learn()
        assert watchdog._models.get(old.pid) == "m"
        new = _stand_in_stub(tmp_path, "m", 1)  # the reload's stub of the same version, started later
        processes.append(new)
        watchdog._learn()
        _wait_dead(old)

        assert watchdog.dead_stubs() == []  # replaced by a reload: nothing to reload
        assert any("reload of its version" in line for line in lines)

        _wait_dead(new)  # the newest stub of version 1 dying is a crash
        assert watchdog.dead_stubs() == [("m", new.pid)]
        _wait_dead(other_version)  # no later stub of version 2 exists: a crash
        assert watchdog.dead_stubs() == [("m", other_version.pid)]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_dead_stub_of_a_version_that_is_no_longer_ready_is_not_reloaded():
    watchdog = StubWatchdog(os.getpid(), "127.0.0.1:1", control_token="secret")
    watchdog._models[321], watchdog._stub_versions[321] = "m", ("1", 0)

    class OldVersionGone(FlakyClient):
        def is_model_ready(self, model: str, version: str = "") -> bool:
            self._step("ready", version)
            return version != "1"  # version 2 serves; version 1 was unloaded by the version policy

    client = OldVersionGone()
    watchdog._reload(client, "m", 321)

    assert client.calls == [("ready", "1")] and watchdog.reloads == []


def test_a_live_stub_missing_from_the_children_lists_is_not_taken_for_dead(tmp_path, monkeypatch):
    """The per-thread ``children`` lists can miss a live child for a moment (a regression: CI saw a
    version reload taken for a crash); liveness is read from the process itself, and a stub that
    ended is judged against every child of the server."""
    from aitune_triton.triton import process as process_module

    lines: list[str] = []
    watchdog = StubWatchdog(os.getpid(), "127.0.0.1:1", log=lines.append)
    old = _stand_in_stub(tmp_path, "m", 1)
    processes = [old]
    try:
        watchdog._learn()
        new = _stand_in_stub(tmp_path, "m", 1)  # the reload's stub, not in the children lists yet
        processes.append(new)
        monkeypatch.setattr(process_module, "children", lambda pid: [])

        assert watchdog.dead_stubs() == []  # the old stub runs: not dead although no list names it
        _wait_dead(old)
        assert watchdog.dead_stubs() == []  # the replacing stub was found by reading every process
        assert watchdog._models.get(new.pid) == "m"
        assert any(f"stub process {old.pid}" in line and "reload of its version" in line for line in lines)
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_learned_pid_reused_by_another_process_counts_as_ended(tmp_path):
    watchdog = StubWatchdog(os.getpid(), "127.0.0.1:1")
    stub = _stand_in_stub(tmp_path, "m", 1)
    try:
        watchdog._learn()
        watchdog._started[stub.pid] -= 1  # as if the pid now named a process started later

        assert watchdog.dead_stubs() == [("m", stub.pid)]
    finally:
        stub.kill()
        stub.wait()


def test_the_earlier_import_path_still_gives_the_watchdog_and_the_process_readers():
    from aitune_triton.triton import process, server, watchdog

    assert server.StubWatchdog is watchdog.StubWatchdog
    assert (server._children, server._stub_model, server._is_dead) == (process.children, process.stub_model, process.is_dead)
    assert (server.find_tritonserver, server.free_port) == (process.find_tritonserver, process.free_port)
