"""The measured max batch size is the default of every strategy: a graph spec whose batch axis
proved independent gets its batch range and Triton's max_batch_size from a sweep of the kept
backend, not from the largest recorded call; a declared BatchDim max wins; a batch-dependent net
keeps its recorded range; the report, the checkpoint and the export carry the sweep."""

from __future__ import annotations

import json

import pytest
import torch
from nets import Centered, IndependentNet, eager

import aitune_triton
from aitune_triton import BatchDim, Module
from aitune_triton.strategies import FirstWinsStrategy, MinLatencyStrategy, OneBackendStrategy, Profiler, report_table
from aitune_triton.strategies.report import GraphTuneReport
from aitune_triton.triton.config import read_model_config

FAST = Profiler(warmup_runs=1, min_runs=3, max_runs=5, max_time_s=0.2)


def _tuned(name: str, strategy, batches=(1, 2), dynamic_shapes=None, net=None) -> Module:
    torch.manual_seed(0)
    module = Module(net or IndependentNet().eval(), name=name, strategy=strategy, dynamic_shapes=dynamic_shapes)
    with torch.no_grad():
        for batch in batches:
            module(torch.randn(batch, 8) if net is None else torch.randn(batch, 3))
    module.tune()
    return module


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: OneBackendStrategy("onnxruntime", profiler=FAST, max_batch_size_limit=16),
        lambda: MinLatencyStrategy(["onnxruntime"], speed_margin=None, profiler=FAST, max_batch_size_limit=16),
        lambda: FirstWinsStrategy(["onnxruntime"], speed_margin=None, profiler=FAST, max_batch_size_limit=16),
    ],
    ids=["one_backend", "min_latency", "first_wins"],
)
def test_a_graph_recorded_at_batch_1_and_2_is_served_at_the_swept_max_batch_size(tmp_path, unique_name, strategy):
    module = _tuned(unique_name, strategy())
    (tuned,) = module.tuned_graphs
    sweep = tuned.report.batch_sweep

    assert sweep is not None and sweep.backend == "onnxruntime"
    assert list(sweep.latencies_ms)[0] == "1" and sweep.stop_reason  # sizes tried from 1, and why it stopped
    assert sweep.max_batch_size == tuned.spec.dims["batch"].max == max(2, sweep.preferred_batch_size)
    assert tuned.spec.preferred_batch_size == sweep.preferred_batch_size == tuned.spec.dims["batch"].opt  # the batch's opt
    assert sweep.checked_batch_size == max(int(size) for size in sweep.latencies_ms)
    # A tiny net's throughput grows well past 2 rows on any CPU: the served range is wider than recorded.
    assert sweep.max_batch_size > 2, sweep.summary()
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    config = read_model_config(tmp_path / "repository" / result.graph_models[0] / "config.pbtxt")
    assert config.max_batch_size == sweep.max_batch_size
    assert list(config.dynamic_batching.preferred_batch_size) == [sweep.preferred_batch_size]
    with torch.no_grad():  # the artifact was built for the widened range and runs at its max
        x = torch.randn(sweep.max_batch_size, 8)
        torch.testing.assert_close(module(x)["hidden"], eager(module)(x)["hidden"], atol=1e-5, rtol=1e-5)


def test_find_max_batch_size_false_keeps_the_recorded_range(unique_name):
    module = _tuned(unique_name, OneBackendStrategy("onnxruntime", profiler=FAST, find_max_batch_size=False))
    (tuned,) = module.tuned_graphs

    assert tuned.spec.dims["batch"].bounds == (1, 2) and tuned.spec.preferred_batch_size is None
    assert tuned.report.batch_sweep is None


def test_a_declared_batch_dim_max_wins_over_the_sweep(unique_name):
    strategy = OneBackendStrategy("onnxruntime", profiler=FAST, max_batch_size_limit=64)
    module = _tuned(unique_name, strategy, dynamic_shapes={"x": {0: BatchDim(1, 4)}})
    (tuned,) = module.tuned_graphs
    sweep = tuned.report.batch_sweep

    assert tuned.spec.dims["batch"].bounds == (1, 4)
    assert sweep is not None and max(int(size) for size in sweep.latencies_ms) <= 4
    assert sweep.max_batch_size == 4 and tuned.spec.preferred_batch_size <= 4
    assert tuned.spec.dims["batch"].opt == tuned.spec.preferred_batch_size


def test_a_net_that_mixes_the_batch_keeps_its_recorded_range_and_is_not_swept(unique_name):
    module = _tuned(unique_name, OneBackendStrategy("onnxruntime", profiler=FAST), batches=(2, 3), net=Centered().eval())
    (tuned,) = module.tuned_graphs

    assert tuned.spec.batch_independent is False
    assert tuned.spec.dims["batch"].bounds == (1, 3) and tuned.spec.preferred_batch_size is None  # as recorded
    assert tuned.report.batch_sweep is None


def test_the_report_shows_the_sweep_and_a_checkpoint_keeps_it(tmp_path, unique_name):
    from rich.console import Console

    module = _tuned(unique_name, OneBackendStrategy("onnxruntime", profiler=FAST, max_batch_size_limit=8))
    (tuned,) = module.tuned_graphs
    console = Console(width=400, record=True)
    console.print(report_table(tuned.report))
    shown = console.export_text()

    assert "batch sweep of onnxruntime (1: " in shown and "stopped: " in shown and f"max_batch_size {tuned.spec.dims['batch'].max}" in shown
    checkpoint = aitune_triton.save(module, tmp_path / "ckpt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    (entry,) = manifest["modules"][0]["module"]["graphs"]
    stored = GraphTuneReport.from_dict(entry["report"])
    assert stored.batch_sweep == tuned.report.batch_sweep
    entry["report"].pop("batch_sweep")  # as written before sweeps were stored
    for candidate in entry["report"]["candidates"]:
        candidate.pop("batch_sweep", None)
    assert GraphTuneReport.from_dict(entry["report"]).batch_sweep is None
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    batch_range = tuned.spec.dims["batch"]
    module.deactivate()
    del module, tuned
    loaded = Module(IndependentNet().eval(), name=unique_name)
    aitune_triton.load(loaded, checkpoint)  # a checkpoint written before sweeps were stored loads
    assert loaded.tuned_graphs[0].spec.dims["batch"] == batch_range


def test_without_a_sweep_a_declared_batch_opt_is_the_preferred_batch_size_and_a_warmup_size(tmp_path, unique_name):
    strategy = OneBackendStrategy("onnxruntime", profiler=FAST, find_max_batch_size=False)
    module = _tuned(unique_name, strategy, batches=(1, 2, 2), dynamic_shapes={"x": {0: BatchDim(1, 8, opt=4)}})
    (tuned,) = module.tuned_graphs

    assert tuned.spec.dims["batch"] == aitune_triton.DimRange(1, 4, 8)  # declared, not the size recorded most (2)
    assert tuned.spec.preferred_batch_size == 4 and tuned.report.batch_sweep is None
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    config = read_model_config(tmp_path / "repository" / result.graph_models[0] / "config.pbtxt")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4]
    # Warmed at the smallest and largest recorded calls, and at the size the batcher aims for.
    assert [w.batch_size for w in config.model_warmup] == [1, 2, 4]
    assert config.model_warmup[2].inputs["x"].input_data_file == config.model_warmup[0].inputs["x"].input_data_file
