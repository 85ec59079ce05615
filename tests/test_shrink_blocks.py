"""Block removal: the calibration-loss ranking and the least-squares bridge folded into the kept block."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import random_calibration
from tests.test_shrink import build, logits, save_and_reload
from llmprune.anatomy import find_blocks, weight_matrix
from llmprune.errors import LLMPruneError
from llmprune.structured import shrink
from llmprune.structured.blocks import BridgeStatistics, fit_bridge, fold_bridge, removed_runs


def test_the_bridge_equals_a_direct_lstsq():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(400, 6, generator=generator, dtype=torch.float64)
    output = torch.randn(400, 6, generator=generator, dtype=torch.float64)
    target = output + m @ torch.randn(6, 6, generator=generator, dtype=torch.float64) + 0.1 * torch.randn(400, 6, generator=generator, dtype=torch.float64)
    stats = BridgeStatistics.empty(6, "cpu")
    stats.update(m[:250], output[:250], target[:250])  # two chunks pool into one fit
    stats.update(m[250:], output[250:], target[250:])
    bridge = fit_bridge(stats, damp=0.0)
    direct = torch.linalg.lstsq(m, target - output).solution  # min ||M D - (L - O)||, T = I + D
    torch.testing.assert_close(bridge, torch.eye(6, dtype=torch.float64) + direct)


def test_heavy_damping_leaves_no_correction():
    stats = BridgeStatistics.empty(4, "cpu")
    stats.update(torch.randn(50, 4), torch.randn(50, 4), torch.randn(50, 4))
    torch.testing.assert_close(fit_bridge(stats, damp=1e9), torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ("llama", "gpt2"))  # Linear and Conv1D, with and without a bias
def test_folding_maps_the_layer_outputs_through_the_bridge(family):
    model = build(family)
    layer = find_blocks(model)[1][0].get_submodule("mlp.down_proj" if family == "llama" else "mlp.c_proj")
    width = weight_matrix(layer).shape[1]
    x = torch.randn(5, width)
    bridge = torch.eye(weight_matrix(layer).shape[0], dtype=torch.float64) + 0.1 * torch.randn(weight_matrix(layer).shape[0], weight_matrix(layer).shape[0], dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x).double() @ bridge
        fold_bridge(layer, bridge)
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_removed_runs_are_contiguous():
    assert removed_runs([7, 2, 3, 5]) == [(2, 3), (5, 5), (7, 7)]


def _calibration_error(model, dense, ids) -> float:
    """Squared distance of the shrunk model's final hidden states from the dense model's."""
    with torch.no_grad():
        got = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        want = dense(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return float((got - want).pow(2).sum())


@pytest.mark.parametrize("family", ("llama", "gpt2", "opt", "gpt_neox"))
def test_the_bridge_lowers_the_error_the_removed_block_leaves(family, tmp_path):
    ids = random_calibration(8, 32, seed=3)
    dense = build(family, layers=4, seed=1)
    plain = build(family, layers=4, seed=1)
    bridged = build(family, layers=4, seed=1)
    forced = {"block_score": "angular", "units": "blocks", "ratio": 0.25, "calibration_ids": ids, "progress": False, "device": "cpu"}
    first = shrink(plain, block_correction=False, **forced)
    report = shrink(bridged, block_correction=True, **forced)
    assert report["removed_blocks"] == first["removed_blocks"]
    [run] = report["block_correction"]
    if report["removed_blocks"] == [0]:
        assert run["skipped"]
        return
    assert run["error_after"] < run["error_before"]
    assert _calibration_error(bridged, dense, ids) < _calibration_error(plain, dense, ids)
    assert bridged.config.num_hidden_layers == len(find_blocks(bridged)[1]) == 3
    torch.testing.assert_close(logits(save_and_reload(bridged, tmp_path / family), ids), logits(bridged, ids), rtol=0, atol=1e-5)


def test_a_removed_block_that_does_nothing_needs_no_bridge():
    model = build("llama", layers=4)
    blocks = find_blocks(model)[1]
    with torch.no_grad():  # block 2 is an identity: removing it changes nothing, and the bridge stays I
        blocks[2].self_attn.o_proj.weight.zero_()
        blocks[2].mlp.down_proj.weight.zero_()
    before = blocks[1].mlp.down_proj.weight.detach().clone()
    report = shrink(model, ratio=0.25, units="blocks", block_correction=True, calibration_ids=random_calibration(),
                    progress=False, device="cpu")
    assert report["removed_blocks"] == [2]
    torch.testing.assert_close(find_blocks(model)[1][1].mlp.down_proj.weight, before, rtol=0, atol=1e-6)


def test_loss_ranking_measures_each_skipped_block_and_removes_the_cheapest():
    ids = random_calibration(12, 16, seed=4)
    model = build("llama", layers=4)
    report = shrink(model, ratio=0.25, units="blocks", block_score="loss", block_correction=False, calibration_ids=ids,
                    progress=False, device="cpu")
    losses = report["block_skip_loss"]
    assert report["removed_blocks"] == [min(range(4), key=losses.__getitem__)]
    for skipped in range(4):  # each loss is the model's own with that block's output replaced by its input
        reference = build("llama", layers=4)
        block = find_blocks(reference)[1][skipped]
        block.register_forward_hook(lambda module, args, kwargs, output: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
        with torch.no_grad():
            expected = float(reference(input_ids=ids[:8], labels=ids[:8]).loss)  # LOSS_WINDOWS = 8
        assert losses[skipped] == pytest.approx(expected, abs=1e-4)


def test_families_with_a_norm_after_the_mlp_lose_blocks_without_a_bridge_and_say_so(capsys):
    model = build("gemma2", layers=4)
    dense = build("gemma2", layers=4)
    report = shrink(model, ratio=0.25, units="blocks", calibration_ids=random_calibration(), progress=False, device="cpu")
    [line] = [line for line in capsys.readouterr().out.splitlines() if "bridge" in line]
    assert "post_feedforward_layernorm" in line and line.endswith(report["block_correction"]["skipped"])
    kept = [i for i in range(4) if i not in report["removed_blocks"]]
    for new, old in enumerate(kept):  # the kept blocks' weights are untouched: no bridge was folded in
        torch.testing.assert_close(find_blocks(model)[1][new].mlp.down_proj.weight, find_blocks(dense)[1][old].mlp.down_proj.weight)


def test_the_cli_reports_bridges_and_distillation(tiny_model_dir, tmp_path, capsys, calibration_text):
    from llmprune.cli import main

    out = tmp_path / "healed"
    assert main(["shrink", "--model", str(tiny_model_dir), "--ratio", "0.5", "--units", "blocks", "--distill-steps", "2",
                 "--calibration", str(calibration_text), "--nsamples", "4", "--seqlen", "16", "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = __import__("json").loads((out / "llmprune_report.json").read_text())
    assert report["block_correction"] and report["distill"]["steps"] == 2
    assert "block bridges (calibration error of each removed run): [" in printed
    assert "distillation: held-out KL to the dense model" in printed


def test_span_ranking_removes_the_contiguous_run_that_changes_the_stream_least():
    model = build("llama", layers=5)
    blocks = find_blocks(model)[1]
    with torch.no_grad():  # blocks 2 and 3 are identities; blocks 0 and 4 alone would be cheaper apart
        for index in (2, 3):
            blocks[index].self_attn.o_proj.weight.zero_()
            blocks[index].mlp.down_proj.weight.zero_()
    report = shrink(model, ratio=0.4, units="blocks", block_score="span", calibration_ids=random_calibration(),
                    progress=False, device="cpu")
    assert report["removed_blocks"] == [2, 3]
    [run] = report["block_correction"]
    assert run["blocks"] == [2, 3] and run["error_before"] == pytest.approx(0.0, abs=1e-10)
