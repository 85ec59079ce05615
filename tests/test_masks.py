"""The fast mask paths (band search for a whole-layer k-th value, pairwise ranks for N:M) against a plain reference."""
import pytest
import torch

from llmprune.methods import masks
from llmprune.methods.masks import keep_n_of_m, keep_per_layer


def reference_keep(scores, count, dim):
    """Prune the ``count`` first entries along ``dim`` ordered by (score, position): a stable sort says which."""
    rank = torch.argsort(torch.argsort(scores, dim=dim, stable=True), dim=dim)  # each entry's place in that order
    return rank >= count


def scores_of(kind, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # a handful of values: surplus ties at almost every threshold
        return torch.randint(0, 4, shape, generator=g).float()
    return torch.randn(shape, generator=g).abs()


@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("sparsity", [1e-5, 0.3, 0.7, 0.99])  # 1e-5: one score, below any sampled band
def test_whole_layer_masks_match_the_reference(kind, sparsity):
    scores = scores_of(kind, (300, 400), seed=1)  # 120,000 scores: above the band search's minimum
    assert scores.numel() >= masks.BAND_SEARCH_MIN
    count = int(scores.numel() * sparsity)
    expected = reference_keep(scores.reshape(-1), count, dim=0).view_as(scores)
    assert torch.equal(keep_per_layer(scores, sparsity), expected)


@pytest.mark.parametrize("kind", ["continuous", "ties"])
@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (3, 4), (4, 8), (1, 8), (8, 16)])
def test_n_of_m_masks_match_the_reference(kind, n, m):
    scores = scores_of(kind, (24, 64), seed=2)
    grouped = scores.reshape(24, 64 // m, m)
    expected = reference_keep(grouped, n, dim=2).reshape(24, 64)
    assert torch.equal(keep_n_of_m(scores, n, m), expected)
