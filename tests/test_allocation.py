"""The depth-ramp allocation: the weighted mean, the ramp's shape, the bounds."""
from __future__ import annotations

import pytest
import torch

from llmprune.allocation import depth_ramp_allocation, depth_ramp_sparsities
from llmprune.errors import LLMPruneError
from llmprune.methods import SparsityTarget
from llmprune.allocation import MAX_BLOCK_SPARSITY


def weighted_mean(values, sizes):
    return sum(v * n for v, n in zip(values, sizes)) / sum(sizes)


def random_sizes(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1_000, 50_000, (count,), generator=generator).tolist()


def steps_between(values):
    return [b - a for a, b in zip(values, values[1:])]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity,step", [(0.7, 0.004), (0.5, 0.01), (0.3, -0.005)])
def test_the_weighted_mean_is_the_target_and_the_ramp_is_linear(seed, sparsity, step):
    sizes = random_sizes(24, seed)
    result, used = depth_ramp_sparsities(sparsity, step, sizes)
    assert used == step  # these ramps fit, so nothing is scaled
    assert weighted_mean(result, sizes) == pytest.approx(sparsity, abs=1e-12)
    assert steps_between(result) == pytest.approx([step] * 23, abs=1e-12)


def test_unequal_sizes_move_the_ramp_so_the_mean_over_weights_holds():
    equal, _ = depth_ramp_sparsities(0.6, 0.01, [100] * 5)
    heavy_last, _ = depth_ramp_sparsities(0.6, 0.01, [100, 100, 100, 100, 1000])
    assert sum(equal) / 5 == pytest.approx(0.6, abs=1e-12)
    # A heavy deep block pulls the weighted mean depth down the ramp, so every block gets less.
    assert all(h < e for h, e in zip(heavy_last, equal))
    assert weighted_mean(heavy_last, [100, 100, 100, 100, 1000]) == pytest.approx(0.6, abs=1e-12)


def test_a_positive_step_rises_with_depth():
    result, _ = depth_ramp_sparsities(0.7, 0.003, random_sizes(30, 7))
    assert all(b > a for a, b in zip(result, result[1:]))


@pytest.mark.parametrize("sizes", [[1] * 12, [5, 1, 9, 2]])
def test_step_zero_is_the_uniform_target(sizes):
    result, used = depth_ramp_sparsities(0.55, 0.0, sizes)
    assert result == [0.55] * len(sizes) and used == 0.0


@pytest.mark.parametrize("sparsity,step", [(0.9, 0.05), (0.1, 0.05), (0.5, -1.0)])
def test_a_ramp_too_steep_is_scaled_to_fit_keeping_the_mean(sparsity, step):
    sizes = random_sizes(16, 3)
    result, used = depth_ramp_sparsities(sparsity, step, sizes)
    assert abs(used) < abs(step) and used * step > 0
    assert all(0.0 <= s <= MAX_BLOCK_SPARSITY for s in result)
    assert min(result) == pytest.approx(0.0, abs=1e-12) or max(result) == pytest.approx(MAX_BLOCK_SPARSITY, abs=1e-12)
    assert weighted_mean(result, sizes) == pytest.approx(sparsity, abs=1e-12)
    assert steps_between(result) == pytest.approx([used] * 15, abs=1e-12)


def test_zero_sparsity_stays_zero_whatever_the_step():
    result, used = depth_ramp_sparsities(0.0, 0.02, [10] * 6)
    assert result == [0.0] * 6 and used == 0.0


def test_the_allocation_gives_targets_and_a_report_entry():
    sizes = [300, 400, 400, 400]
    entry, targets = depth_ramp_allocation(SparsityTarget.parse(0.7), 0.02, sizes)
    expected, used = depth_ramp_sparsities(0.7, 0.02, sizes)
    assert [t.sparsity for t in targets] == expected and not any(t.semi_structured for t in targets)
    assert entry == {"step": 0.02, "step_used": round(used, 9), "block_sparsity": [round(s, 6) for s in expected]}


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: depth_ramp_allocation(SparsityTarget.parse(pattern="2:4"), 0.01, [1, 1]), "N:M"),
        (lambda: depth_ramp_sparsities(0.5, 0.01, [1, -1]), "sizes"),
        (lambda: depth_ramp_sparsities(0.5, 0.01, [0, 0]), "sizes"),
        (lambda: depth_ramp_sparsities(1.0, 0.01, [1, 1]), "sparsity"),
        (lambda: depth_ramp_sparsities(0.5, float("nan"), [1, 1]), "step"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(LLMPruneError, match=message):
        call()
