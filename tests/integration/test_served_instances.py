"""The served layout measured at tune time (instances x intra-op threads) is what the export
writes and what the real server runs, explicit options override it, and a tuned call leaves the
caller's torch thread count as it was.

Uses the session's ``served`` fixture: its graph_1 (AOTInductor) was tuned with
``measure_layouts=True``, saved as a checkpoint and exported by the command line.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import aitune_triton
from aitune_triton import RemoteModule
from aitune_triton.strategies.layout import available_cores, layouts_for
from aitune_triton.triton import TritonModelOptions
from aitune_triton.triton.config import THREADS_PARAMETER, read_model_config
from aitune_triton.triton.manifest import latest_version, read_manifest
from tritonclient.grpc import model_config_pb2 as mc

pytestmark = pytest.mark.triton


def _layout(served):
    report = served.module.tuned_graphs[1].report
    assert report is not None and report.layout is not None
    return report.layout


def _graph_model(repository, name):
    model_dir = repository / name
    return read_model_config(model_dir / "config.pbtxt"), read_manifest(model_dir / str(latest_version(model_dir)))


def test_the_tuning_measured_every_layout_that_fills_the_machine(served):
    layout = _layout(served)
    cores = available_cores()
    assert layout.cores == cores
    if len(layouts_for(cores)) < 2:
        assert layout.instances is None and "one layout" in layout.reason
        return
    assert [(r.instances, r.threads) for r in layout.layouts] == layouts_for(cores)
    for result in layout.layouts:
        assert result.latency_ms and result.latency_ms > 0 and result.throughput and result.throughput > 0
    chosen = layout.result(layout.instances)
    assert chosen is not None and chosen.threads == layout.threads
    assert "within 10%" in layout.reason
    assert layout.in_process_threads in range(1, cores + 1)
    assert set(layout.in_process_latencies_ms) == {str(n) for n in range(1, min(cores, 8) + 1)}


def test_the_export_wrote_the_measured_layout_and_recorded_it_in_the_manifest(served):
    layout = _layout(served)
    config, manifest = _graph_model(served.repository, served.graph_models[1])
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU
    assert group.count == (layout.instances or 1)
    assert config.parameters[THREADS_PARAMETER].string_value == str(layout.threads or 1)
    recorded = manifest.extra["layout"]
    assert recorded["measured"] == json.loads(json.dumps(layout.to_dict()))  # through the checkpoint and the CLI
    assert recorded["written"]["instances"] == group.count
    assert recorded["written"]["intra_op_threads"] == int(config.parameters[THREADS_PARAMETER].string_value)
    # graph_0 measured nothing: the defaults, said so.
    config_0, manifest_0 = _graph_model(served.repository, served.graph_models[0])
    assert config_0.instance_group[0].count == 1
    assert manifest_0.extra["layout"] == {
        "written": {"instances": 1, "instances_from": "default", "intra_op_threads": 1, "threads_from": "default"},
        "measured": None,
    }


def test_the_served_layout_answers_concurrent_requests_like_eager(served):
    generator = torch.Generator().manual_seed(5)
    inputs = [[torch.randn(batch, 8, generator=generator) for batch in (1, 2, 5)] for _ in range(4)]

    def client(xs):  # one RemoteModule per client thread, as separate clients would
        remote = RemoteModule(served.server.grpc_url, served.entry_model, protocol="grpc")
        return [remote(x) for x in xs]

    with ThreadPoolExecutor(len(inputs)) as pool:
        outputs = [out for per_client in pool.map(client, inputs) for out in per_client]
    for x, output in zip([x for xs in inputs for x in xs], outputs):
        expected = served.net(x)
        torch.testing.assert_close(output["hidden"][0], expected["hidden"][0].detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(output["logits"], expected["logits"].detach(), atol=1e-5, rtol=0)


def test_explicit_options_override_the_measured_layout(served, tmp_path):
    repository = tmp_path / "repo"
    options = TritonModelOptions(instance_count=3, intra_op_threads=2)
    aitune_triton.export(served.checkpoint, repository, options=options, show_progress=False)
    config, manifest = _graph_model(repository, served.graph_models[1])
    assert config.instance_group[0].count == 3
    assert config.parameters[THREADS_PARAMETER].string_value == "2"
    assert manifest.extra["layout"]["written"] == {
        "instances": 3, "instances_from": "instance_count", "intra_op_threads": 2, "threads_from": "intra_op_threads",
    }


@pytest.mark.parametrize("caller_threads", [1, 2])
def test_a_tuned_call_leaves_the_callers_thread_count(served, caller_threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(caller_threads)
    try:
        x = torch.randn(3, 8)
        output = served.module(x)  # graph_1: the AOTInductor backend with its measured threads
        assert torch.get_num_threads() == caller_threads
        torch.testing.assert_close(output["logits"], served.net(x)["logits"].detach(), atol=1e-5, rtol=0)
    finally:
        torch.set_num_threads(previous)
