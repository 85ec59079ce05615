"""The methods on single matrices: masks, and SparseGPT against a brute-force OBS reference."""
import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.methods import SparsityTarget, get_method
from llmprune.methods.masks import keep_n_of_m, keep_per_layer, keep_per_row
from llmprune.methods.sparsegpt import SparseGPT


def correlated_inputs(tokens=512, columns=32, seed=0):
    """Inputs with correlated features and a few outlier channels, as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=g) / columns**0.5 + torch.eye(columns)
    x = torch.randn(tokens, columns, generator=g) @ mixing
    x[:, :3] *= 8.0
    return x


def statistics_for(method, x):
    stats = method.new_statistics(x.shape[1], x.device)
    half = x.shape[0] // 2  # two batches, to exercise the running accumulation
    method.update_statistics(stats, x[:half])
    method.update_statistics(stats, x[half:])
    return stats


def pruned_weight(name, weight, x, target, **options):
    method = get_method(name, **options)
    result = method.prune(weight.clone(), statistics_for(method, x), target)
    new = result.weight if result.weight is not None else weight
    return new.masked_fill(~result.keep, 0.0), result.keep


def reconstruction_error(weight, pruned, x):
    return torch.linalg.norm(x @ weight.t() - x @ pruned.t()).item()


def obs_reference(weight, x, keep, percdamp=0.01):
    """Optimal brain surgeon, one column at a time, with explicit inverses of the unvisited set.

    Visiting columns left to right, a pruned weight's error is compensated on the columns
    not yet visited, optimally for the inputs' Hessian restricted to those columns.
    """
    w = weight.double().clone()
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    h += percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=torch.double)
    columns = w.shape[1]
    for j in range(columns):
        rest = list(range(j, columns))
        hinv = torch.linalg.inv(h[rest][:, rest])
        for row in range(w.shape[0]):
            if not keep[row, j]:
                w[row, rest] -= w[row, j] / hinv[0, 0] * hinv[:, 0]
                w[row, j] = 0.0
    return w.float()


@pytest.mark.parametrize("target", [SparsityTarget.parse(0.5), SparsityTarget.parse(pattern="2:4")])
def test_sparsegpt_matches_brute_force_obs(target):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 16, generator=g)
    x = correlated_inputs(tokens=256, columns=16)
    # A small block size so the lazy updates between blocks are exercised too.
    pruned, keep = pruned_weight("sparsegpt", weight, x, target, blocksize=8)
    reference = obs_reference(weight, x, keep)
    torch.testing.assert_close(pruned, reference, atol=1e-4, rtol=1e-4)


def test_reconstruction_error_ranks_sparsegpt_then_wanda_then_magnitude():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(48, 32, generator=g)
    x = correlated_inputs()
    target = SparsityTarget.parse(0.5)
    errors = {name: reconstruction_error(weight, pruned_weight(name, weight, x, target)[0], x) for name in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_update_beats_wanda_at_the_same_mask():
    """With the mask held fixed, SparseGPT's weight update alone must reduce the error."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 32, generator=g)
    x = correlated_inputs()
    wanda, keep = pruned_weight("wanda", weight, x, SparsityTarget.parse(0.5))
    updated = obs_reference(weight, x, keep)
    assert (updated[~keep] == 0).all()
    assert reconstruction_error(weight, updated, x) < reconstruction_error(weight, wanda, x)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_prunes_exactly_per_row(sparsity):
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(20, 40, generator=g)
    _, keep = pruned_weight("wanda", weight, correlated_inputs(columns=40), SparsityTarget.parse(sparsity))
    assert ((~keep).sum(dim=1) == int(40 * sparsity)).all()


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_every_group_is_exactly_n_of_m(name, pattern):
    n, m = map(int, pattern.split(":"))
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(12, 32, generator=g)
    pruned, keep = pruned_weight(name, weight, correlated_inputs(), SparsityTarget.parse(pattern=pattern))
    zeros_per_group = (pruned == 0).reshape(12, 32 // m, m).sum(dim=2)
    assert (zeros_per_group == n).all()
    assert ((~keep).reshape(12, 32 // m, m).sum(dim=2) == n).all()


def test_magnitude_removes_the_smallest_weights_of_the_layer():
    weight = torch.tensor([[0.1, -5.0, 0.2, 3.0], [4.0, -0.05, 6.0, 0.3]])
    pruned, _ = pruned_weight("magnitude", weight, correlated_inputs(columns=4), SparsityTarget.parse(0.5))
    expected = torch.tensor([[0.0, -5.0, 0.0, 3.0], [4.0, 0.0, 6.0, 0.0]])
    assert torch.equal(pruned, expected)


def test_wanda_score_weighs_columns_by_input_norm():
    # Equal magnitudes: the column whose inputs are loud must survive.
    weight = torch.ones(2, 4)
    x = torch.ones(10, 4)
    x[:, 2] = 10.0
    x[:, 0] = 0.1
    _, keep = pruned_weight("wanda", weight, x, SparsityTarget.parse(0.25))
    assert keep[:, 2].all() and not keep[:, 0].any()


def test_mask_helpers_count_exactly():
    scores = torch.rand(7, 16)
    assert (~keep_per_row(scores, 0.25)).sum(dim=1).eq(4).all()
    assert (~keep_per_layer(scores, 0.5)).sum() == 56
    assert (~keep_n_of_m(scores, 2, 4)).reshape(7, 4, 4).sum(dim=2).eq(2).all()


def test_sparsegpt_retries_with_more_damping_on_a_singular_hessian():
    method = SparseGPT()
    x = torch.zeros(64, 8)
    x[:, 0] = 1.0
    x[:, 1] = 1.0  # two identical columns: H is singular before damping
    stats = statistics_for(method, x)
    result = method.prune(torch.randn(4, 8), stats, SparsityTarget.parse(0.5))
    assert torch.isfinite(result.weight).all()
    assert (~result.keep).sum() == 16


@pytest.mark.parametrize(
    "sparsity,pattern,message",
    [(1.0, None, "[0, 1)"), (-0.1, None, "[0, 1)"), (None, "2-4", "malformed"), (None, "4:2", "impossible"),
     (None, "0:4", "impossible"), (0.5, "2:4", "not both")],
)
def test_bad_targets_are_refused(sparsity, pattern, message):
    with pytest.raises(LLMPruneError, match=message.replace("[", r"\[").replace(")", r"\)")):
        SparsityTarget.parse(sparsity, pattern)


def test_unknown_method_is_refused():
    with pytest.raises(LLMPruneError, match="unknown method"):
        get_method("prune-everything")


@pytest.mark.parametrize("seed", range(5))
def test_masks_count_exactly_even_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (9, 24), generator=g).float()  # heavy ties at the threshold
    for keep, expected in ((keep_per_row(scores, 0.5), 12), (keep_n_of_m(scores, 2, 4).reshape(9, 6, 4), 2)):
        assert ((~keep).sum(dim=-1) == expected).all()
    flat = keep_per_layer(scores, 0.4)
    assert (~flat).sum() == int(scores.numel() * 0.4)
    assert scores[~flat].max() <= scores[flat].min()


def test_wanda_statistics_over_many_tokens_are_the_sum_of_squares():
    # More tokens than one slice of squares: the slices must add up to the whole sum.
    from llmprune.methods import wanda

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * wanda.SQUARES_ROWS + 123, 6, generator=g)
    stats = wanda.Wanda().new_statistics(6, torch.device("cpu"))
    wanda.Wanda().update_statistics(stats, x)
    expected = x.double().square().sum(dim=0)
    assert torch.allclose(stats.double(), expected, rtol=1e-5)


def test_tie_break_keeps_the_first_of_equal_scores():
    # One group with surplus ties (three equal lowest scores, two to prune) next to one without.
    scores = torch.tensor([[1.0, 1.0, 1.0, 5.0], [4.0, 3.0, 2.0, 1.0]])
    keep = keep_per_row(scores, 0.5)
    assert keep.tolist() == [[False, False, True, True], [True, True, False, False]]
