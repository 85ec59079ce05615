"""The block runner on tiny random models of every supported family."""
import pytest
import torch
import transformers

import llmprune
from llmprune.errors import LLMPruneError
from llmprune.anatomy import find_blocks, prunable_weights


def prunable_layers(block):
    return {name: weight.module for name, weight in prunable_weights(block).items()}


def weight_matrix(module):
    return module.weight.data.t() if type(module).__name__ == "Conv1D" else module.weight.data

from tests.conftest import FAMILIES, random_calibration, tiny_model
from tests.selection_helpers import assert_same_selection


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prune_save_reload_gives_identical_outputs(family, tmp_path):
    model = tiny_model(family)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    report = llmprune.prune(model, None, method="sparsegpt", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    path, blocks = find_blocks(model)
    pruned_names = set(report["layers"])
    expected = {f"{path}.{i}.{name}" for i, block in enumerate(blocks) for name in prunable_layers(block)}
    assert pruned_names == expected and pruned_names
    for name, sparsity in report["layers"].items():
        assert 0.45 <= sparsity <= 0.55, (name, sparsity)
    # Everything outside the blocks' linear layers (embeddings, norms, lm_head, biases) is untouched.
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {f"{name}.weight" for name in pruned_names}

    llmprune.save_pretrained(model, None, tmp_path / "out", report)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = random_calibration(2, 16, seed=9)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    for name in pruned_names:
        assert torch.equal(dict(reloaded.named_modules())[name].weight == 0, dict(model.named_modules())[name].weight == 0)


def test_single_pass_and_two_pass_schedules_both_prune_exactly():
    ids = random_calibration(nsamples=6)
    fused, chunked = tiny_model(), tiny_model()
    r1 = llmprune.prune(fused, None, method="wanda", sparsity=0.5, calibration_ids=ids, progress=False)
    r2 = llmprune.prune(chunked, None, method="wanda", sparsity=0.5, calibration_ids=ids, batch_size=2, progress=False)
    assert r1["calibration"]["chunks"] == 1 and r2["calibration"]["chunks"] == 3
    for name in r1["layers"]:
        for model in (fused, chunked):
            w = weight_matrix(dict(model.named_modules())[name])
            assert ((w == 0).sum(dim=1) == w.shape[1] // 2).all()
    # The first layer of block 0 sees identical inputs under both schedules, so the same mask (up to
    # near-ties: one pass sums the squares in another order than three chunks) and the dense kept values.
    dense = tiny_model()
    seen = []
    q_proj = dense.model.layers[0].self_attn.q_proj
    handle = q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        dense(ids)
    handle.remove()
    scores = q_proj.weight.detach().abs() * seen[0].square().sum(0).sqrt()
    expected = torch.ones_like(scores, dtype=torch.bool).scatter_(1, torch.topk(scores, 32, dim=1, largest=False).indices, False)
    for model in (fused, chunked):
        pruned = model.model.layers[0].self_attn.q_proj.weight
        assert_same_selection(pruned != 0, expected, scores, 32)
        assert torch.equal(pruned[pruned != 0], q_proj.weight[pruned != 0])


def test_layers_sharing_an_input_share_statistics_with_the_two_pass_schedule():
    """q/k/v read one tensor: wanda's masks must equal those from norms computed directly."""
    model = tiny_model()
    ids = random_calibration()
    inputs = {}
    block = model.model.layers[0]
    handle = block.self_attn.k_proj.register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    original = block.self_attn.k_proj.weight.detach().clone()
    llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=ids, batch_size=2, progress=False)
    norms = inputs["x"].reshape(-1, 64).float().square().sum(0).sqrt()
    score = original.abs() * norms
    expected = torch.ones_like(score, dtype=torch.bool).scatter_(1, torch.topk(score, 32, dim=1, largest=False).indices, False)
    assert_same_selection(block.self_attn.k_proj.weight != 0, expected, score, 32)  # norms summed in another order


def test_magnitude_needs_no_calibration_and_ignore_leaves_layers_alone():
    model = tiny_model()
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    report = llmprune.prune(model, None, method="magnitude", pattern="2:4", ignore=["mlp.down_proj"], progress=False)
    assert report["calibration"]["nsamples"] == 0
    assert not any(name.endswith("down_proj") for name in report["layers"])
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, before)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert ((q == 0).reshape(q.shape[0], -1, 4).sum(-1) == 2).all()


def test_targets_select_layers_by_glob():
    model = tiny_model()
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, targets=["mlp.*"], calibration_ids=random_calibration(), progress=False)
    assert report["layers"] and all(".mlp." in name for name in report["layers"])


def test_pattern_that_does_not_divide_a_layer_names_it():
    config = FAMILIES["llama"]()
    config.intermediate_size = 100
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(LLMPruneError, match=r"model\.layers\.0\.mlp\.down_proj has 100 inputs.*M=8"):
        llmprune.prune(model, None, method="wanda", pattern="4:8", calibration_ids=random_calibration(), progress=False)


def test_report_has_the_documented_fields():
    report = llmprune.prune(tiny_model(), None, method="wanda", sparsity=0.6, calibration_ids=random_calibration(), progress=False)
    for key in ("method", "pattern", "target_sparsity", "total_sparsity", "layers", "calibration", "prune_seconds", "peak_rss_mb", "versions"):
        assert key in report
    assert report["total_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert set(report["calibration"]) >= {"source", "nsamples", "seqlen", "seed"}


def test_row_slices_give_the_same_result_as_the_whole_matrix(monkeypatch):
    """Wanda is handed big layers a slice of rows at a time; the result must not change."""
    from torch import nn

    from llmprune.anatomy import PrunableWeight
    from llmprune.engine import pruning, prune_weight
    from llmprune.methods import SparsityTarget
    from llmprune.methods.wanda import Wanda

    ROWS_PER_SLICE = 100
    monkeypatch.setattr(pruning, "ELEMENTS_PER_SLICE", 32 * ROWS_PER_SLICE)
    torch.manual_seed(0)
    layer = nn.Linear(32, 2 * ROWS_PER_SLICE + 77, bias=False)
    stats = torch.rand(32) * 10
    for target in (SparsityTarget.parse(0.6), SparsityTarget.parse(pattern="2:4")):
        expected = layer.weight.detach().clone()
        result = Wanda().prune(expected.clone(), stats, target)
        expected.masked_fill_(~result.keep, 0.0)
        sliced = nn.Linear(32, layer.out_features, bias=False)
        sliced.weight.data.copy_(layer.weight.data)
        prune_weight(PrunableWeight("layer", sliced), Wanda(), stats, target)
        assert torch.equal(sliced.weight.data, expected)
