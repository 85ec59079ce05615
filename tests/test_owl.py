"""OWL: the allocation arithmetic on synthetic ratios, the outlier ratio, and a whole run."""
from __future__ import annotations

import pytest
import torch

import llmprune
from llmprune.errors import LLMPruneError
from llmprune.anatomy import find_blocks, prunable_weights
from llmprune.engine import Lifecycle, capture_block_inputs


def prunable_layers(block):
    return {name: weight.module for name, weight in prunable_weights(block).items()}
from llmprune.allocation.owl import measure_outlier_ratios, outlier_ratio, owl_sparsities
from tests.conftest import random_calibration, tiny_model


def _check(result, ratios, sparsity, lam, sizes=None):
    sizes = sizes or [1] * len(ratios)
    mean = sum(s * n for s, n in zip(result, sizes)) / sum(sizes)
    assert mean == pytest.approx(sparsity, abs=1e-12)
    assert all(sparsity - lam - 1e-12 <= s <= sparsity + lam + 1e-12 for s in result)
    # More outliers, less pruning: sparsity falls as the ratio rises.
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(result[a] >= result[b] - 1e-12 for a, b in zip(order, order[1:]))


@pytest.mark.parametrize("seed", range(5))
def test_allocation_bounds_and_mean_on_random_ratios(seed):
    generator = torch.Generator().manual_seed(seed)
    ratios = (torch.rand(24, generator=generator) ** 3 * 0.05).tolist()  # skewed, like real models
    result = owl_sparsities(ratios, 0.7, 0.08)
    _check(result, ratios, 0.7, 0.08)
    assert max(result) - min(result) > 0.08  # the range is used, not collapsed


def test_allocation_matches_the_paper_when_inside_the_bounds():
    # Symmetric ratios: the paper's min-max mapping stays inside S +- lambda untouched.
    ratios = [0.0, 0.25, 0.5, 0.75, 1.0]
    result = owl_sparsities(ratios, 0.6, 0.1)
    assert result == pytest.approx([0.7, 0.65, 0.6, 0.55, 0.5])


def test_lopsided_ratios_are_kept_within_lambda():
    # One outlier-heavy block: the paper's mapping would give it S - 1.5 lambda.
    ratios = [0.01, 0.01, 0.01, 0.2]
    result = owl_sparsities(ratios, 0.7, 0.08)
    _check(result, ratios, 0.7, 0.08)
    assert result[3] == pytest.approx(0.62)  # pushed exactly to the bound


def test_mean_is_over_weights_when_blocks_differ_in_size():
    ratios = [0.01, 0.04, 0.02, 0.03]
    sizes = [100, 400, 100, 1000]
    result = owl_sparsities(ratios, 0.5, 0.08, sizes)
    _check(result, ratios, 0.5, 0.08, sizes)
    plain_mean = sum(result) / len(result)
    assert plain_mean != pytest.approx(0.5, abs=1e-6)  # a plain mean would have been wrong here


def test_allocation_edge_cases():
    assert owl_sparsities([0.1, 0.1, 0.1], 0.5, 0.08) == [0.5] * 3
    assert owl_sparsities([], 0.5) == []
    low = owl_sparsities([0.0, 1.0, 0.5], 0.03, 0.08)  # near zero: no negative sparsity
    assert min(low) >= 0 and sum(low) / 3 == pytest.approx(0.03)


def test_outlier_ratio_counts_against_the_common_mean():
    a = torch.ones(10)
    b = torch.tensor([1.0] * 9 + [100.0])
    mean = (a.sum() + b.sum()) / 20
    expected = float(((torch.cat([a, b]) > 5 * mean).sum()) / 20)
    assert outlier_ratio([a, b], 5) == pytest.approx(expected)
    assert outlier_ratio([a, b], 5) == pytest.approx(1 / 20)


def test_block_outlier_ratios_match_a_direct_dense_computation():
    model = tiny_model("llama")
    calibration = random_calibration()
    got = measure_outlier_ratios(Lifecycle(model, progress=False), capture_block_inputs(model, [calibration], "cpu"), m=3.0)
    # Directly: run the dense model with hooks recording every linear layer's inputs.
    _, blocks = find_blocks(model)
    norms = {}
    handles = []
    for index, block in enumerate(blocks):
        for name, layer in prunable_layers(block).items():
            def hook(module, args, key=(index, name)):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                norms[key] = x.square().sum(0).sqrt()
            handles.append(layer.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=calibration)
    for handle in handles:
        handle.remove()
    for index, block in enumerate(blocks):
        scores = torch.cat([
            (layer.weight.double().abs() * norms[(index, name)]).reshape(-1)
            for name, layer in prunable_layers(block).items()
        ])
        expected = float((scores > 3.0 * scores.mean()).double().mean())
        assert got[index] == pytest.approx(expected, abs=2e-4), index


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_run_prunes_blocks_to_their_allocated_sparsity(method):
    model = tiny_model("llama")
    model.config.num_hidden_layers = 2
    report = llmprune.prune(
        model, method=method, sparsity=0.6, calibration_ids=random_calibration(), owl=True, owl_lambda=0.1,
        progress=False, device="cpu",
    )
    owl = report["owl"]
    assert owl["m"] == 5.0 and owl["lambda"] == 0.1
    assert len(owl["block_sparsity"]) == 2 and owl["block_sparsity"][0] != owl["block_sparsity"][1]
    for name, sparsity in report["layers"].items():
        block = int(name.split(".")[2])
        # Wanda prunes int(columns * s) per row, so up to one weight per row less.
        assert owl["block_sparsity"][block] - 1 / 64 <= sparsity <= owl["block_sparsity"][block] + 1e-6, name
    assert report["total_sparsity"] == pytest.approx(0.6, abs=0.02)


def test_owl_refuses_patterns():
    with pytest.raises(LLMPruneError, match="N:M"):
        llmprune.prune(tiny_model(), method="wanda", pattern="2:4", owl=True, calibration_ids=random_calibration(), progress=False)
