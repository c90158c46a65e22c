"""Typed deployment options: every field written into config.pbtxt, parsed back and compared; each
validation error names the field, what was expected and what was given."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format
from nets import TwoInputNet
from repo_helpers import fast_onnxruntime
from tritonclient.grpc import model_config_pb2 as mc

import aitune_triton

from aitune_triton.errors import ExportError, InvalidArgumentError, InvalidOptionError
from aitune_triton.triton.config import (
    THREADS_PARAMETER,
    TritonModelOptions,
    graph_model_config,
    read_model_config,
    router_model_config,
    write_model_config,
)
from aitune_triton.triton.io import ModelIO, TensorIO
from aitune_triton.triton.options import (
    DynamicBatching,
    InstanceGroup,
    InstanceKind,
    QueuePolicy,
    TimeoutAction,
    VersionPolicy,
)


def _io(name: str = "net.graph_0", max_batch_size: int = 8, preferred: int | None = None) -> ModelIO:
    x = TensorIO("x", "x", "float32", "TYPE_FP32", (4,), 0, ((1, 8), (4, 4)))
    y = TensorIO("y", "output", "float32", "TYPE_FP32", (4,), 0, ((1, 8), (4, 4)))
    return ModelIO(name, name.rpartition(".")[2], "{}", "x: float32[B,4]", "onnxruntime", "model.onnx", max_batch_size,
                   [x], [y], "", preferred_batch_size=preferred)


def _round_trip(config: mc.ModelConfig, tmp_path) -> mc.ModelConfig:
    path = write_model_config(config, tmp_path / "config.pbtxt")
    parsed = read_model_config(path)
    assert parsed == config
    return parsed


def test_every_dynamic_batching_field_round_trips(tmp_path):
    batching = DynamicBatching(
        preferred_batch_size=(2, 4, 16),
        max_queue_delay_microseconds=2500,
        preserve_ordering=False,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy(TimeoutAction.DELAY, 50_000, True, 64),
    )

    parsed = _round_trip(graph_model_config(_io(), TritonModelOptions(dynamic_batching=batching)), tmp_path).dynamic_batching

    assert list(parsed.preferred_batch_size) == [2, 4]  # 16 is above max_batch_size 8
    assert parsed.max_queue_delay_microseconds == 2500
    assert parsed.preserve_ordering is False
    ordered = DynamicBatching(preserve_ordering=True, priority_levels=1, default_priority_level=1)
    assert _round_trip(graph_model_config(_io(), TritonModelOptions(dynamic_batching=ordered)), tmp_path).dynamic_batching.preserve_ordering
    assert (parsed.priority_levels, parsed.default_priority_level) == (3, 2)
    policy = parsed.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.DELAY
    assert (policy.default_timeout_microseconds, policy.allow_timeout_override, policy.max_queue_size) == (50_000, True, 64)


def test_the_measured_batch_size_is_the_preferred_one_unless_options_give_sizes(tmp_path):
    measured = _io(preferred=4)

    assert list(graph_model_config(measured, TritonModelOptions()).dynamic_batching.preferred_batch_size) == [4]
    given = TritonModelOptions(dynamic_batching=DynamicBatching(preferred_batch_size=(8,)))
    assert list(graph_model_config(measured, given).dynamic_batching.preferred_batch_size) == [8]


def test_the_shorthand_fields_and_dynamic_batching_agree():
    options = TritonModelOptions(max_queue_delay_microseconds=700, preferred_batch_size=[2])

    assert options.dynamic_batching == DynamicBatching(preferred_batch_size=(2,), max_queue_delay_microseconds=700)
    given = TritonModelOptions(dynamic_batching=DynamicBatching(max_queue_delay_microseconds=9))
    assert given.max_queue_delay_microseconds == 9


def test_a_model_that_does_not_batch_gets_no_dynamic_batching():
    config = graph_model_config(_io(max_batch_size=0), TritonModelOptions(dynamic_batching=DynamicBatching(priority_levels=2, default_priority_level=1)))

    assert not config.HasField("dynamic_batching")


def test_instance_groups_are_per_graph_model_with_a_global_default(tmp_path):
    options = TritonModelOptions(
        instance_count=2,
        instance_kind="cpu",
        instance_groups={"graph_1": InstanceGroup("gpu", 3, (0, 1)), "net.graph_2": InstanceGroup(InstanceKind.CPU, 4)},
    )

    groups = {
        name: list(_round_trip(graph_model_config(_io(name), options), tmp_path).instance_group)
        for name in ("net.graph_0", "net.graph_1", "net.graph_2")
    }

    assert groups["net.graph_0"] == [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)]
    assert groups["net.graph_1"] == [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=3, gpus=[0, 1])]
    assert groups["net.graph_2"] == [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=4)]
    assert options.unknown_groups([("net.graph_0", "graph_0"), ("net.graph_1", "graph_1")]) == ["net.graph_2"]


def test_a_module_exported_as_one_model_takes_its_instance_group_by_graph_or_model_name(tmp_path, unique_name):
    torch.manual_seed(0)
    module = aitune_triton.Module(TwoInputNet().eval(), name=unique_name, strategy=fast_onnxruntime(), cache_dir=tmp_path / "cache")
    with torch.no_grad():
        for batch in (1, 3):
            module(torch.randn(batch, 8))
    module.tune()

    for key in ("graph_0", unique_name):
        options = TritonModelOptions(instance_groups={key: InstanceGroup("cpu", count=2)})
        plan = aitune_triton.export(module, tmp_path / "repo", options=options, dry_run=True)
        (model,) = plan.models
        assert model.name == unique_name  # one model, no router
        config = text_format.Parse(model.config_text, mc.ModelConfig())
        assert list(config.instance_group) == [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)]
    with pytest.raises(InvalidOptionError, match=rf"expected graph names or graph model names of this export \(graph_0, {unique_name}\), got \['graph_1'\]"):
        aitune_triton.export(module, tmp_path / "repo", options=TritonModelOptions(instance_groups={"graph_1": InstanceGroup()}), dry_run=True)


def test_enum_fields_take_either_case():
    assert InstanceGroup("CPU").kind is InstanceKind.CPU
    assert QueuePolicy("delay").timeout_action is TimeoutAction.DELAY


def test_auto_instances_follow_the_tuning_device():
    auto = InstanceGroup()

    assert auto.message("cuda:0").kind == mc.ModelInstanceGroup.KIND_GPU
    assert auto.message("cpu").kind == mc.ModelInstanceGroup.KIND_CPU
    assert list(InstanceGroup("auto", gpus=(1,)).message("cpu").gpus) == []  # GPU indices go with KIND_GPU only


def test_threads_parameters_and_response_cache_round_trip(tmp_path):
    options = TritonModelOptions(intra_op_threads=2, parameters={"team": "search", "tier": "1"}, response_cache=True)

    parsed = _round_trip(graph_model_config(_io(), options), tmp_path)

    assert {key: value.string_value for key, value in parsed.parameters.items()} == {
        THREADS_PARAMETER: "2", "team": "search", "tier": "1"
    }
    assert parsed.response_cache.enable is True


def test_one_intra_op_thread_is_the_default_and_none_leaves_the_runtime_default():
    assert graph_model_config(_io(), TritonModelOptions()).parameters[THREADS_PARAMETER].string_value == "1"
    assert THREADS_PARAMETER not in graph_model_config(_io(), TritonModelOptions(intra_op_threads=None)).parameters
    assert not graph_model_config(_io(), TritonModelOptions()).response_cache.enable


@pytest.mark.parametrize(
    "policy, expected",
    [
        (VersionPolicy(), mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))),
        (VersionPolicy(latest=2), mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=2))),
        (VersionPolicy(all=True), mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())),
        (VersionPolicy(specific=(1, 3)), mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[1, 3]))),
    ],
)
def test_version_policies_round_trip_on_graph_and_entry_models(policy, expected, tmp_path):
    options = TritonModelOptions(version_policy=policy)

    assert _round_trip(graph_model_config(_io(), options), tmp_path).version_policy == expected
    assert _round_trip(router_model_config("net", [_io()], {"module": "net", "signature": [], "strict": True, "graphs": [_io().to_dict()]}, options), tmp_path).version_policy == expected


@pytest.mark.parametrize(
    "text, expected",
    [("latest:3", VersionPolicy(latest=3)), ("all", VersionPolicy(all=True)), ("specific:1,2", VersionPolicy(specific=(1, 2)))],
)
def test_version_policy_parses_the_cli_form(text, expected):
    assert VersionPolicy.parse(text) == expected


@pytest.mark.parametrize(
    "build, field_name, given",
    [
        (lambda: DynamicBatching(preferred_batch_size=(0,)), "preferred_batch_size", "[0]"),
        (lambda: DynamicBatching(preferred_batch_size=4), "preferred_batch_size", "4"),
        (lambda: DynamicBatching(max_queue_delay_microseconds=-1), "max_queue_delay_microseconds", "-1"),
        (lambda: DynamicBatching(preserve_ordering="yes"), "preserve_ordering", "'yes'"),
        (lambda: DynamicBatching(priority_levels=-2), "priority_levels", "-2"),
        (lambda: DynamicBatching(priority_levels=2, default_priority_level=3), "default_priority_level", "3"),
        (lambda: DynamicBatching(default_priority_level=1), "default_priority_level", "1"),
        (lambda: DynamicBatching(preserve_ordering=True, priority_levels=2, default_priority_level=1), "priority_levels", "2"),
        (lambda: DynamicBatching(default_queue_policy={"max_queue_size": 2}), "default_queue_policy", "max_queue_size"),
        (lambda: QueuePolicy(timeout_action="DROP"), "default_queue_policy.timeout_action", "'DROP'"),
        (lambda: QueuePolicy(default_timeout_microseconds=1.5), "default_queue_policy.default_timeout_microseconds", "1.5"),
        (lambda: QueuePolicy(allow_timeout_override=1), "default_queue_policy.allow_timeout_override", "1"),
        (lambda: QueuePolicy(max_queue_size=-1), "default_queue_policy.max_queue_size", "-1"),
        (lambda: InstanceGroup("tpu"), "instance_kind", "'tpu'"),
        (lambda: InstanceGroup(count=0), "instance_count", "0"),
        (lambda: InstanceGroup(gpus=(-1,)), "gpus", "[-1]"),
        (lambda: InstanceGroup("cpu", gpus=(0,)), "gpus", "[0]"),
        (lambda: VersionPolicy(latest=0), "version_policy.latest", "0"),
        (lambda: VersionPolicy(all=True, specific=(1,)), "version_policy", "specific=(1,)"),
        (lambda: VersionPolicy(specific=(0,)), "version_policy.specific", "[0]"),
        (lambda: VersionPolicy.parse("newest"), "version_policy", "'newest'"),
        (lambda: TritonModelOptions(intra_op_threads=0), "intra_op_threads", "0"),
        (lambda: TritonModelOptions(entry_instance_count=0), "entry_instance_count", "0"),
        (lambda: TritonModelOptions(instance_groups={"graph_0": 2}), "instance_groups", "2"),
        (lambda: TritonModelOptions(parameters={"k": 1}), "parameters", "1"),
        (lambda: TritonModelOptions(parameters={"aitune_triton.routes": "x"}), "parameters", "'aitune_triton.routes'"),
        (lambda: TritonModelOptions(response_cache="yes"), "response_cache", "'yes'"),
        (lambda: TritonModelOptions(warmup=1), "warmup", "1"),
        (lambda: TritonModelOptions(version_policy="all"), "version_policy", "'all'"),
        (lambda: TritonModelOptions(dynamic_batching=100), "dynamic_batching", "100"),
    ],
)
def test_bad_options_name_the_field_expected_and_given(build, field_name, given):
    with pytest.raises(InvalidOptionError) as raised:
        build()

    message = str(raised.value)
    assert message.startswith(f"{field_name}: expected "), message
    assert given in message
    # One error type for the API and the CLI: an invalid argument and an export error alike.
    assert isinstance(raised.value, InvalidArgumentError) and isinstance(raised.value, ExportError)
