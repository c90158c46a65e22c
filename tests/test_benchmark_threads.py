"""benchmarks/served_threads.py keeps running: one short round on ONNX Runtime, end to end with the
embedded server. No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from triton_helpers import require_tritonserver

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.triton
def test_served_threads_benchmark_runs_one_round_and_writes_every_number(tmp_path):
    require_tritonserver()
    report_path = tmp_path / "threads.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "served_threads.py"), "--rounds", "1", "--seconds", "0.5",
        "--backends", "onnxruntime", "--json", str(report_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads(report_path.read_text())
    assert (report["rounds"], report["clients"], report["batch"]) == (1, 2, 8)
    entry = report["backends"]["onnxruntime"]
    for threads in ("threads_1_req_s", "threads_2_req_s"):
        assert set(entry[threads]) == {"min", "median", "max"} and entry[threads]["min"] > 0
    assert len(entry["ratio_2_vs_1_per_round"]) == 1
    assert "2 vs 1:" in done.stdout
