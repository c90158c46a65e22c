"""The server's life: where it listens, how a death is reported and cleaned up, what it refuses to load.

Every test runs a real tritonserver on a tiny module exported with ONNX Runtime (an entry model
with 4 instances and one graph model: five Python-backend stubs).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import aitune_triton
from nets import eager
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from aitune_triton.errors import TritonServerError
from aitune_triton.triton.server import TritonServer
from triton_helpers import processes_mentioning, require_tritonserver

pytestmark = pytest.mark.triton

MODEL = "lifecycle_tiny_net"


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


@dataclass
class Exported:
    net: torch.nn.Module
    repository: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    require_tritonserver()
    root = tmp_path_factory.mktemp("lifecycle")
    torch.manual_seed(0)
    net = TinyNet().eval()
    module = Module(net, name=MODEL, strategy=OneBackendStrategy("onnxruntime"), cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 4):
            module(torch.randn(batch, 4))
    module.tune()
    aitune_triton.export(module, root / "repo", show_progress=False, router=True)  # the tests name its graph model
    return Exported(eager(net), root / "repo")


def _state(pid: int) -> str:
    """The process state letter (``Z``: a zombie, dead but not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _listening_addresses(ports: set[int]) -> dict[int, set[str]]:
    """Port -> the local addresses of LISTEN sockets on it (from /proc/net/tcp and tcp6)."""
    found: dict[int, set[str]] = {}
    for table, is_v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) not in ports:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            address = ipaddress.IPv6Address(raw) if is_v6 else ipaddress.IPv4Address(raw)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            found.setdefault(int(port_hex, 16), set()).add(str(address))
    return found


def _non_loopback_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback ones (from ``ip``; none when it is missing)."""
    try:
        listing = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    addresses = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", listing)
    return [address for address in addresses if not ipaddress.IPv4Address(address).is_loopback]


def _connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def _assert_serves_eager_values(net: torch.nn.Module, url: str) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(RemoteModule(url, MODEL, protocol="grpc")(x), expected, atol=1e-5, rtol=0)


def test_a_server_listens_on_127_0_0_1_only_by_default_and_serves_the_eager_values(exported):
    with TritonServer(exported.repository, show_progress=False, timeout_s=180) as server:
        ports = {server.http_port, server.grpc_port, server.metrics_port}
        listening = _listening_addresses(ports)

        assert set(listening) == ports
        assert all(addresses == {"127.0.0.1"} for addresses in listening.values()), listening
        assert (server.http_url, server.grpc_url) == (f"127.0.0.1:{server.http_port}", f"127.0.0.1:{server.grpc_port}")
        for address in _non_loopback_ipv4_addresses():
            assert not any(_connects(address, port) for port in ports), address
        _assert_serves_eager_values(exported.net, server.grpc_url)


def test_a_server_given_host_0_0_0_0_warns_and_listens_on_every_interface(exported):
    with pytest.warns(UserWarning, match=r"listen on 0\.0\.0\.0 \(every interface\).*no authentication"):
        server = TritonServer(exported.repository, show_progress=False, timeout_s=180, host="0.0.0.0")
    with server:
        ports = {server.http_port, server.grpc_port, server.metrics_port}
        listening = _listening_addresses(ports)

        assert set(listening) == ports
        assert all(addresses <= {"0.0.0.0", "::"} for addresses in listening.values()), listening
        assert server.grpc_url == f"0.0.0.0:{server.grpc_port}"
        for address in _non_loopback_ipv4_addresses():
            assert all(_connects(address, port) for port in ports), address
        _assert_serves_eager_values(exported.net, server.grpc_url)


def test_serve_exits_1_naming_the_signal_and_keeps_the_log_when_tritonserver_is_killed(exported):
    serve = subprocess.Popen(
        [sys.executable, "-m", "aitune_triton", "serve", str(exported.repository), "--quiet-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert serve.stdout is not None
        reader = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # a hung start fails the test, not hangs it
        try:
            serving = reader.submit(serve.stdout.readline).result(timeout=180)  # printed once the models are ready
        finally:
            reader.shutdown(wait=False)
        assert serving.startswith(f"Serving {exported.repository}: HTTP 127.0.0.1:"), serving
        assert "gRPC 127.0.0.1:" in serving and "metrics 127.0.0.1:" in serving
        servers = [pid for pid in processes_mentioning(str(exported.repository)) if pid != serve.pid]
        tritonserver = [pid for pid in servers if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(serve.pid)]
        assert len(tritonserver) == 1
        stubs = [pid for pid in servers if pid not in tritonserver]
        assert len(stubs) == 5  # 4 entry model instances and 1 graph model instance

        os.kill(tritonserver[0], signal.SIGKILL)
        _, stderr = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            serve.terminate()  # serve stops its server on SIGTERM
            serve.wait(timeout=60)

    assert serve.returncode == 1
    match = re.search(r"Error: tritonserver was killed by signal SIGKILL while serving; its log is kept at (\S+)\.\n", stderr)
    assert match, stderr
    log = Path(match.group(1))
    try:
        assert "Started GRPCInferenceService at 127.0.0.1:" in log.read_text()
        assert processes_mentioning(str(exported.repository)) == []  # serve ended the stubs before exiting
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def test_stop_after_the_server_was_killed_ends_its_stubs_says_how_it_died_and_keeps_the_log(exported):
    server = TritonServer(exported.repository, show_progress=False, timeout_s=180)
    server.start()
    temporary = server.log_path.parent
    try:
        assert server._process is not None
        pid = server._process.pid
        stubs = [other for other in processes_mentioning(str(exported.repository)) if other != pid]
        assert len(stubs) == 5
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _state(pid) != "Z" and time.monotonic() < deadline:  # dead, not yet reaped
            time.sleep(0.05)
        assert _state(pid) == "Z"
        assert sorted(processes_mentioning(str(exported.repository))) == sorted(stubs)  # they outlive the server
        assert server.exit_message is None  # not known before stop() looks
    finally:
        server.stop()
    try:
        assert processes_mentioning(str(exported.repository)) == []
        assert server.exit_message == "tritonserver was killed by signal SIGKILL"
        assert not server.is_running()
        assert "Started HTTPService at 127.0.0.1:" in server.log_path.read_text()  # the temporary log is kept
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def test_a_flipped_byte_in_an_exported_artifact_fails_the_model_load_naming_the_file_and_both_hashes(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported.repository, repository)
    version_dir = repository / f"{MODEL}.graph_0" / "1"
    artifact = version_dir / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    expected = json.loads((version_dir / "manifest.json").read_text())["sha256"]["model.onnx"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    server = TritonServer(repository, log_path=tmp_path / "server.log", show_progress=False, timeout_s=180)

    with pytest.raises(TritonServerError) as raised:
        server.start()

    message = f"{artifact}: SHA-256 mismatch, expected {expected} (manifest.json), actual {actual}"
    assert message in str(raised.value)
    assert any(message in line for line in raised.value.log_lines)
    assert not server.is_running()
    assert processes_mentioning(str(repository)) == []


def test_a_changed_contract_file_beside_the_entry_model_fails_its_load_naming_the_file(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported.repository, repository)
    version_dir = repository / MODEL / "1"
    contract = version_dir / "aitune_triton_served" / "contract.py"  # the served package's copy
    contract.write_text(contract.read_text() + "\nprint('code a client put here')\n")
    server = TritonServer(repository, log_path=tmp_path / "server.log", show_progress=False, timeout_s=180)

    with pytest.raises(TritonServerError) as raised:
        server.start()

    assert f"{contract}: SHA-256 mismatch, expected " in str(raised.value)
    assert not server.is_running()
