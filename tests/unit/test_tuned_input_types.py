"""A tuned module refuses arguments of the wrong type with a clear message, not an obscure mismatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import ArgumentTypeError


@pytest.mark.parametrize("fallback", [None, "eager"])
def test_a_tuned_module_given_a_numpy_array_asks_for_torch_tensors(unique_name, fallback):
    module = Module(torch.nn.Linear(8, 4).eval(), name=unique_name, strategy=OneBackendStrategy("eager"), fallback=fallback)
    with torch.no_grad():
        for batch in (1, 2):
            module(torch.randn(batch, 8))
    module.tune()

    with pytest.raises(ArgumentTypeError, match=f"Module '{unique_name}': pass torch tensors, as to the module itself; got a numpy array"):
        module(np.zeros((2, 8), dtype=np.float32))
