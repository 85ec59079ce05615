"""ADMM's gradual mask, from what the solver receives: a spy on the mask selection records the sparsity
it is asked for at each mask iteration, and the mask it returns."""
from __future__ import annotations

import pytest
import torch

from llmprune.methods import SparsityTarget, masks
from llmprune.methods.admm import ADMM
from tests.test_methods import correlated_inputs, statistics_for


@pytest.mark.parametrize("iterations, mask_iterations", [(8, 5), (4, 15)])
def test_the_solver_receives_the_cubic_schedule_of_fractions(monkeypatch, iterations, mask_iterations):
    received: list[tuple[float, int]] = []
    original = masks.keep_per_layer

    def spy(scores, sparsity):
        keep = original(scores, sparsity)
        received.append((sparsity, int((~keep).sum())))
        return keep

    monkeypatch.setattr(masks, "keep_per_layer", spy)
    weight = torch.randn(12, 32, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(tokens=256, columns=32)
    method = ADMM(iterations=iterations, mask_iterations=mask_iterations)
    result = method.prune(weight.clone(), statistics_for(method, x), SparsityTarget.parse(0.6))
    steps = min(iterations, mask_iterations)  # the mask is chosen during the first `steps` iterations only
    # s (1 - (1 - t/T)^3) after iteration t = 1..T: a quarter-plus of the target at once, the rest ever slower
    expected = [0.6 * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]
    assert [fraction for fraction, _ in received] == pytest.approx(expected, abs=1e-12)
    assert [pruned for _, pruned in received] == [int(weight.numel() * f) for f in expected]
    assert int((~result.keep).sum()) == int(weight.numel() * 0.6)
