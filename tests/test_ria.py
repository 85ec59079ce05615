"""RIA: scores against a direct element-by-element computation, the comparison groups, and a whole run."""
from __future__ import annotations

import math

import torch

import llmprune
from llmprune.methods import SparsityTarget, get_method
from llmprune.methods.ria import ria_scores
from tests.conftest import random_calibration, tiny_model


def direct_ria(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The paper's formula written out with loops over plain Python numbers."""
    rows, cols = weight.shape
    w = weight.tolist()
    x = inputs.tolist()
    norms = [math.sqrt(sum(x[t][j] ** 2 for t in range(len(x)))) for j in range(cols)]
    row_sum = [sum(abs(w[i][k]) for k in range(cols)) for i in range(rows)]
    col_sum = [sum(abs(w[k][j]) for k in range(rows)) for j in range(cols)]
    out = [[(abs(w[i][j]) / row_sum[i] + abs(w[i][j]) / col_sum[j]) * norms[j] ** 0.5 for j in range(cols)] for i in range(rows)]
    return torch.tensor(out, dtype=torch.float64)


def _stats(method, inputs: torch.Tensor, batches: int = 3):
    stats = method.new_statistics(inputs.shape[1], torch.device("cpu"))
    for part in torch.tensor_split(inputs, batches):  # several batches must add up to one
        method.update_statistics(stats, part.float())
    return stats


def test_scores_match_direct_computation():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 10, generator=generator)
    # Inputs with very different scales per column, so the activation factor matters.
    inputs = torch.randn(40, 10, generator=generator) * torch.linspace(0.1, 5.0, 10)
    method = get_method("ria")
    stats = _stats(method, inputs)
    got = ria_scores(weight, stats).double()
    torch.testing.assert_close(got, direct_ria(weight, inputs), rtol=1e-5, atol=1e-7)


def test_unstructured_compares_over_the_whole_layer():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 16, generator=generator)
    # Row 0 is tiny: a layer-wide comparison prunes it far more than the others.
    weight[0] *= 1e-3
    inputs = torch.randn(32, 16, generator=generator)
    method = get_method("ria")
    result = method.prune(weight.clone(), _stats(method, inputs), SparsityTarget.parse(0.5))
    assert (~result.keep).sum().item() == 64  # exactly int(0.5 * 128) over the layer
    scores = direct_ria(weight, inputs)
    pruned_max = scores[~result.keep].max()
    kept_min = scores[result.keep].min()
    assert pruned_max <= kept_min  # the lowest scores of the whole layer went
    row_sparsity = (~result.keep).float().mean(dim=1)
    assert row_sparsity[0] > row_sparsity[1:].max()  # not per row, unlike Wanda
    assert result.weight is None  # RIA does not update weights


def test_n_of_m_groups():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 16, generator=generator)
    inputs = torch.randn(32, 16, generator=generator)
    method = get_method("ria")
    result = method.prune(weight.clone(), _stats(method, inputs), SparsityTarget.parse(pattern="2:4"))
    groups = result.keep.reshape(8, 4, 4)
    assert (groups.sum(dim=2) == 2).all()
    scores = direct_ria(weight, inputs).reshape(8, 4, 4)
    for row in range(8):
        for group in range(4):
            kept = scores[row, group][groups[row, group]]
            dropped = scores[row, group][~groups[row, group]]
            assert dropped.max() <= kept.min()


def test_prune_a_model_with_ria():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = llmprune.prune(model, method="ria", sparsity=0.5, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert report["method"] == "ria"
    assert abs(report["total_sparsity"] - 0.5) < 0.01
    for name, sparsity in report["layers"].items():
        assert abs(sparsity - 0.5) < 0.01, name
    # Kept weights keep their values.
    for name, param in model.named_parameters():
        kept = param != 0
        torch.testing.assert_close(param[kept], before[name][kept])


def test_large_layers_are_pruned_whole_not_in_row_slices(monkeypatch):
    # Engines may slice row-separable methods; RIA's column sums and layer-wide group must see every row.
    from torch import nn

    from llmprune.anatomy import PrunableWeight
    from llmprune.engine import pruning, prune_weight

    ROWS_PER_SLICE = 100
    monkeypatch.setattr(pruning, "ELEMENTS_PER_SLICE", 16 * ROWS_PER_SLICE)

    generator = torch.Generator().manual_seed(4)
    layer = nn.Linear(16, ROWS_PER_SLICE * 2 + 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
        layer.weight[: ROWS_PER_SLICE] *= 0.01  # the first slice is weak: a layer-wide group prunes it most
    original = layer.weight.detach().clone()
    stats = torch.rand(16, generator=generator) + 0.5
    method = get_method("ria")
    prune_weight(PrunableWeight("layer", layer), method, stats, SparsityTarget.parse(0.5))
    expected = method.prune(original.clone(), stats, SparsityTarget.parse(0.5)).keep
    assert torch.equal(layer.weight != 0, expected)
