"""The stub watchdog's reload steps, driven with a stand-in client that fails where a real server can.

The watchdog against a real server (a killed stub, an aborting request) is tested in
tests/integration/test_served_contract.py; here each failure point of a reload is reached on purpose.
"""

from __future__ import annotations

import json
import os

from aitune_triton.triton.server import StubWatchdog


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
