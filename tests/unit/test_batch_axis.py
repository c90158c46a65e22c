"""The batch axis is decided by measuring whether samples mix, not by whether batch sizes varied."""

from __future__ import annotations

import pytest
import torch
from nets import Centered
from nets import IndependentNet as Net

from aitune_triton import BatchDim, Module, OneBackendStrategy
from aitune_triton.errors import GraphSpecMismatchError
from nets import eager


class FixedBatch(torch.nn.Module):
    """Only runs at batch size 4 (it reshapes with a literal size)."""

    def forward(self, x: torch.Tensor):
        return x.reshape(4, 8) * 2


def _record(module: Module, batch: int, calls: int = 3, features: int = 8) -> None:
    generator = torch.Generator().manual_seed(batch)
    with torch.no_grad():
        for _ in range(calls):
            module(torch.randn(batch, features, generator=generator))


@pytest.mark.parametrize("backend", ["aoti", "onnxruntime"])
def test_a_graph_recorded_only_at_batch_4_runs_at_batch_1_and_3_equal_to_eager(unique_name, backend):
    torch.manual_seed(0)
    net = Net().eval()
    # The recorded range, as served without the batch size sweep (tests/unit/test_batch_sweep.py covers it).
    module = Module(net, name=unique_name, strategy=OneBackendStrategy(backend, find_max_batch_size=False))
    _record(module, batch=4)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.backend.name == backend
    assert tuned.spec.dims["batch"].bounds == (1, 4)
    assert tuned.spec.batch_independent is True
    assert [spec.batch_axis for spec in tuned.spec.inputs + tuned.spec.outputs] == [0, 0, 0]
    assert "batch axis 1..4, requests may be joined" in tuned.report.batch
    for batch in (1, 3, 4):
        x = torch.randn(batch, 8, generator=torch.Generator().manual_seed(100 + batch))
        output, expected = module(x), eager(net)(x)
        torch.testing.assert_close(output["hidden"], expected["hidden"], atol=1e-5, rtol=0)
        torch.testing.assert_close(output["total"], expected["total"], atol=1e-5, rtol=0)
    with pytest.raises(GraphSpecMismatchError, match="x axis 0: size 5 outside 1..4"):
        module(torch.randn(5, 8))


def test_a_module_mixing_samples_recorded_at_batch_4_keeps_batch_4_only_and_the_report_says_why(unique_name, capsys):
    module = Module(Centered().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batch=4, features=3)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is False
    assert "batch" not in tuned.spec.dims
    assert [spec.batch_axis for spec in tuned.spec.inputs + tuned.spec.outputs] == [None, None]
    assert [spec.dim_names for spec in tuned.spec.inputs] == [(None, None)]
    why = "batch fixed at 4 (one batch size recorded): a recorded batch of 4 split into 1 + 3 gave other outputs"
    assert why in tuned.report.batch
    assert why in capsys.readouterr().err  # the tuning log
    x = torch.randn(4, 3)
    torch.testing.assert_close(module(x), Centered()(x), atol=1e-5, rtol=0)
    with pytest.raises(GraphSpecMismatchError, match="x axis 0: size 3 outside 4..4"):
        module(torch.randn(3, 3))


def test_a_module_mixing_samples_whose_batch_size_varied_keeps_its_dynamic_axis_without_joining(unique_name):
    module = Module(Centered().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    for batch in (2, 4):
        _record(module, batch=batch, calls=1, features=3)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.dims["batch"].bounds == (1, 4) and tuned.spec.batch_independent is False
    assert "batch axis 1..4 (sizes varied), Triton will not join requests" in tuned.report.batch
    x = torch.randn(3, 3)
    torch.testing.assert_close(module(x), Centered()(x), atol=1e-5, rtol=0)


def test_a_module_that_fails_on_half_its_recorded_batch_keeps_that_batch_size(unique_name):
    module = Module(FixedBatch().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batch=4, calls=2)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert "batch" not in tuned.spec.dims and tuned.spec.batch_independent is False
    assert "batch fixed at 4" in tuned.report.batch and "raised RuntimeError" in tuned.report.batch
    x = torch.randn(4, 8)
    torch.testing.assert_close(module(x), FixedBatch()(x), atol=1e-6, rtol=0)


def test_a_graph_recorded_only_at_batch_1_is_proved_independent_by_joining_recorded_calls(unique_name):
    torch.manual_seed(0)
    net = Net().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False))
    _record(module, batch=1, calls=3)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is True
    assert tuned.spec.dims["batch"].bounds == (1, 1)
    assert "3 recorded calls of batch 1 joined into one batch gave the outputs of one batch" in tuned.report.batch
    assert "declare BatchDim(1, N)" in tuned.report.batch
    x = torch.randn(1, 8)
    torch.testing.assert_close(module(x)["hidden"], eager(net)(x)["hidden"], atol=1e-5, rtol=0)


def test_a_module_mixing_samples_recorded_only_at_batch_1_is_caught_by_joining_calls(unique_name):
    module = Module(Centered().eval(), name=unique_name, strategy=OneBackendStrategy("eager"))
    _record(module, batch=1, calls=2, features=3)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is False and "batch" not in tuned.spec.dims
    assert "2 recorded calls of batch 1 joined into one batch gave other outputs" in tuned.report.batch


def test_a_declared_batch_recorded_only_at_batch_1_is_exported_dynamic_and_runs_at_batch_3(unique_name):
    torch.manual_seed(0)
    net = Net().eval()
    module = Module(
        net, name=unique_name, strategy=OneBackendStrategy("aoti"), dynamic_shapes={"x": {0: BatchDim(1, 8)}}
    )
    _record(module, batch=1, calls=2)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is True and tuned.spec.dims["batch"].bounds == (1, 8)
    x = torch.randn(3, 8)
    torch.testing.assert_close(module(x)["hidden"], eager(net)(x)["hidden"], atol=1e-5, rtol=0)


def test_the_decided_batch_axis_survives_a_state_dict_round_trip(unique_name):
    torch.manual_seed(0)
    net = Net().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False))
    _record(module, batch=4)
    module.tune()
    state = module.to_dict()
    del module

    loaded = Module.from_dict(net, state)

    (tuned,) = loaded.tuned_graphs
    assert tuned.spec.dims["batch"].bounds == (1, 4) and tuned.spec.batch_independent is True
    assert "requests may be joined" in tuned.report.batch
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded(x)["hidden"], eager(net)(x)["hidden"], atol=1e-5, rtol=0)


class CountsItsBatch(torch.nn.Module):
    """Independent tensor outputs, but a non-tensor output that is the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor):
        return {"y": self.linear(x), "n": x.shape[0]}


class NamesItsBatch(torch.nn.Module):
    """Samples are independent, but the forward reads its batch size as a Python int into the graph."""

    def forward(self, x: torch.Tensor):
        if x.shape[0] == 4:  # the same values either way, but torch.export must specialise the batch to 4
            return x * 2
        return x + x


def test_a_non_tensor_output_that_follows_the_batch_size_keeps_the_batch_fixed(unique_name):
    torch.manual_seed(0)
    module = Module(CountsItsBatch().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batch=4)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is False
    assert "batch" not in tuned.spec.dims
    assert "non-tensor output 'n' is 4 for one batch but 1 for a part" in tuned.report.batch
    assert module(torch.randn(4, 8))["n"] == 4
    with pytest.raises(GraphSpecMismatchError):
        module(torch.randn(1, 8))  # eager would say n == 1: the tuned module refuses rather than answer 4


def test_a_forward_that_specialises_on_its_one_recorded_batch_size_is_tuned_with_that_batch_fixed(unique_name):
    net = NamesItsBatch().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batch=4)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.backend.name == "onnxruntime"
    assert "batch" not in tuned.spec.dims
    assert tuned.report.batch.startswith("batch fixed at 4: no candidate passed with the batch axis dynamic")
    x = torch.randn(4, 8)
    torch.testing.assert_close(module(x), eager(net)(x))


class PairSwap(torch.nn.Module):
    """Mixes samples in pairs: each output row is its input plus its pair partner's (the halves of an even batch agree)."""

    def forward(self, x: torch.Tensor):
        return x + x.reshape(-1, 2, x.shape[1]).flip(1).reshape(-1, x.shape[1])


def test_a_module_mixing_samples_in_pairs_keeps_its_recorded_batch_although_the_halves_agree(unique_name):
    module = Module(PairSwap().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batch=4, features=6)

    module.tune()

    (tuned,) = module.tuned_graphs
    assert tuned.spec.batch_independent is False
    assert "batch" not in tuned.spec.dims
    assert "split into 1 + 3" in tuned.report.batch
