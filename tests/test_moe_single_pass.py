"""The default single pass over a mixture-of-experts block, checked against routing recomputed here: each
expert's gate/up statistics from exactly its routed rows, the all-tokens fallback and ``--expert-statistics
all-tokens`` from every row, and the token threshold at its exact boundary (chunked and single pass).

Every expected statistic is computed in the test from the MoE module's recorded input and the router's own
weights (top-2 of the router logits), never read back from the engine."""
from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import llmprune
from llmprune.engine import pruning
from tests.conftest import random_calibration
from tests.moe_helpers import MOE_FAMILIES

CALIBRATION = random_calibration(nsamples=4, seqlen=32)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # sums of squares of the same rows in another order


def qwen3_moe(layers: int = 3):
    """A tiny random Qwen3-MoE with three blocks (4 experts, top-2, grouped heads, head_dim given)."""
    torch.manual_seed(0)
    config = MOE_FAMILIES["qwen3_moe"]()
    config.num_hidden_layers = layers
    config.use_cache = False
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def prune_and_spy(monkeypatch, **options) -> tuple[nn.Module, dict, dict]:
    """Prune with Wanda in the single pass; returns the model, the report, and block 0's statistics per
    weight as the method received them (the first call per name is block 0's)."""
    seen: dict[str, torch.Tensor] = {}
    original = pruning.prune_weight

    def spy(weight, method, stats, target):
        if ".experts." in weight.name and weight.name not in seen:
            seen[weight.name] = None if stats is None else stats.clone()
        original(weight, method, stats, target)

    monkeypatch.setattr(pruning, "prune_weight", spy)
    model = qwen3_moe()
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False,
                            **options)
    return model, report, seen


@torch.no_grad()
def routed_rows(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Block 0's MoE input rows (recorded by the test's own hook on the pruned model: the router is never
    pruned and block 0's attention was pruned before its experts) and each row's top-2 experts, from the
    router's weights."""
    block = model.model.layers[0]
    seen = []
    handle = block.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    model(CALIBRATION)
    handle.remove()
    rows = seen[0]
    chosen = torch.topk(rows @ block.mlp.gate.weight.t(), 2, dim=-1).indices
    return rows, chosen


def intermediates(model, expert: int, rows: torch.Tensor) -> torch.Tensor:
    """act(gate) * up of ``rows`` through block 0's expert, with its weights as they are now (pruned)."""
    gate, up = (rows @ model.model.layers[0].mlp.experts.gate_up_proj[expert].t()).chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


@torch.no_grad()
def test_single_pass_gate_and_up_statistics_are_those_of_the_routed_rows(monkeypatch):
    model, _, seen = prune_and_spy(monkeypatch, min_expert_tokens=1)
    rows, chosen = routed_rows(model)
    for expert in range(4):
        mine = rows[(chosen == expert).any(dim=1)]
        assert 0 < mine.shape[0] < rows.shape[0]
        for part in ("gate_proj", "up_proj"):
            torch.testing.assert_close(seen[f"mlp.experts.{expert}.{part}"], mine.square().sum(0), **TOLERANCE)
        torch.testing.assert_close(seen[f"mlp.experts.{expert}.down_proj"], intermediates(model, expert, mine).square().sum(0),
                                   **TOLERANCE)


@pytest.mark.parametrize("options", [dict(min_expert_tokens=10**6, expert_fallback="all-tokens"),
                                     dict(min_expert_tokens=1, expert_statistics="all-tokens")],
                         ids=["fallback", "statistics"])
@torch.no_grad()
def test_single_pass_all_tokens_statistics_are_those_of_every_row(monkeypatch, options):
    model, report, seen = prune_and_spy(monkeypatch, **options)
    assert report["experts"]["statistics"] == options.get("expert_statistics", "routed")
    rows, _ = routed_rows(model)
    for expert in range(4):
        for part in ("gate_proj", "up_proj"):
            torch.testing.assert_close(seen[f"mlp.experts.{expert}.{part}"], rows.square().sum(0), **TOLERANCE)
        torch.testing.assert_close(seen[f"mlp.experts.{expert}.down_proj"], intermediates(model, expert, rows).square().sum(0),
                                   **TOLERANCE)


@pytest.mark.parametrize("batch_size", [None, 2], ids=["single-pass", "chunks"])
def test_an_expert_with_exactly_the_threshold_keeps_its_routed_statistics(batch_size):
    """min_tokens = n: an expert with n tokens is not below the threshold; with n + 1 it is."""
    # Block 0's routing does not depend on the expert policy. The single pass routes the output of the
    # already pruned attention; chunks gather the whole dense block's statistics before pruning it.
    probe = qwen3_moe()
    if batch_size is None:
        llmprune.prune(probe, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False,
                       min_expert_tokens=1)
    _, chosen = routed_rows(probe)
    counts = [int((chosen == e).any(dim=1).sum()) for e in range(4)]
    boundary = sorted(counts)[1]
    for threshold in (boundary, boundary + 1):
        report = llmprune.prune(qwen3_moe(), None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION,
                                progress=False, batch_size=batch_size, min_expert_tokens=threshold, expert_fallback="magnitude")
        module = report["experts"]["modules"]["model.layers.0.mlp.experts"]
        assert module["tokens"] == counts
        assert module["fell_back"] == {str(e): "magnitude" for e in range(4) if counts[e] < threshold}, (counts, threshold)
    assert any(count == boundary for count in counts)
