"""Block reconstruction: the mask never changes, held-out block error falls, streaming stays byte-identical,
every family runs, options fail early."""
from __future__ import annotations

import pytest
import torch

import llmprune
from llmprune.anatomy import find_blocks, prunable_weights
from llmprune.engine import BlockStep, Lifecycle, prune_model
from llmprune.errors import LLMPruneError
from llmprune.methods import SparsityTarget, get_method
from llmprune.reconstruct import BlockReconstruction, norm_parameters, plan_micro_batches
from tests.conftest import FAMILIES, random_calibration, tiny_model
from tests.test_streaming import _files, _in_memory, _model_folder


class MaskSpy(BlockStep):
    """Runs before reconstruction: records each block's pruned matrices (and norms) as pruning left them."""

    name = "spy"

    def __init__(self):
        self.pruned: dict[tuple[int, str], torch.Tensor] = {}
        self.norms: dict[int, list[torch.Tensor]] = {}

    def after_prune(self, context) -> bool:
        for name, weight in context.weights.items():
            self.pruned[context.index, name] = weight.matrix().clone()
        self.norms[context.index] = [p.detach().clone() for p in norm_parameters(context.block)]
        return False


def _prune(model, method="sparsegpt", sparsity=0.6, pattern=None, windows=8, seqlen=32, **settings):
    spy = MaskSpy()
    # No rollback: these tests look at what training does (random calibration need not generalise).
    settings = {"target": "teacher", "parts": "block", "steps": 12, "lr": 1e-3, "batch_size": 2, "norms": False,
                "progress": False, "rollback": False, **settings}
    recon = BlockReconstruction(**settings)
    chunks = list(torch.tensor_split(random_calibration(windows, seqlen), 1))
    target = SparsityTarget.parse(None if pattern else sparsity, pattern)
    outcome = prune_model(Lifecycle(model, device="cpu", progress=False), get_method(method), target, chunks, steps=[spy, recon])
    return spy, outcome.entries["reconstruct"]


CASES = [("teacher", "block", False), ("local", "separate", True)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("target,parts,norms", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_mask_never_changes_and_surviving_weights_train(family, target, parts, norms):
    model = tiny_model(family)
    _, blocks = find_blocks(model)
    blocks[0].requires_grad_(False)  # block 0 frozen, block 1 trainable: both must come back as they were
    spy, entry = _prune(model, target=target, parts=parts, norms=norms)
    moved = 0
    for index, block in enumerate(blocks):
        for name, weight in prunable_weights(block).items():
            pruned, final = spy.pruned[index, name], weight.matrix()
            assert torch.equal(final != 0, pruned != 0), f"block {index} {name}: the mask changed"
            assert torch.all(final[pruned == 0] == 0)
            moved += int((final != pruned).sum())
            assert weight.parameter.requires_grad == (index > 0) and weight.parameter.grad is None
        norms_now = [p.detach() for p in norm_parameters(block)]
        norms_changed = any(not torch.equal(a, b) for a, b in zip(spy.norms[index], norms_now))
        assert norms_changed == (norms and bool(norms_now)), f"block {index}: norms trained = {norms_changed}"
    assert moved > 0, f"reconstruction changed no surviving weight: {entry['blocks']}"
    assert [b["block"] for b in entry["blocks"]] == list(range(len(blocks)))
    assert entry["target"] == target and entry["parts"] == parts


@pytest.mark.parametrize("target,parts,loss", [("local", "block", "mse"), ("teacher", "block", "mse"),
                                               ("local", "separate", "mse"), ("teacher", "block", "token")])
def test_held_out_block_error_falls(target, parts, loss):
    model = tiny_model("llama")
    _, entry = _prune(model, sparsity=0.7, windows=48, seqlen=32, steps=60, batch_size=4, target=target, parts=parts,
                      loss=loss)
    assert entry["held_out_windows"] == 6 and entry["train_windows"] == 42 and entry["loss"] == loss
    for block in entry["blocks"]:
        assert block["held_out_error_after"] < 0.9 * block["held_out_error_before"], block


def test_token_loss_weighs_every_token_alike_where_mse_sees_only_massive_entries():
    """One token carries a massive activation (as Qwen2.5's first token does): a 1% error there outweighs a 50%
    error on an ordinary token under mse, and counts for less under token; the held-out pooling agrees."""
    from llmprune.reconstruct import relative_error, training_loss

    target = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0))
    target[0, 0, 3] = 3000.0
    on_massive, on_ordinary = target.clone(), target.clone()
    on_massive[0, 0] += 0.01 * target[0, 0].norm() / 4  # 1% of that token's norm, spread over 16 entries
    on_ordinary[0, 2] += 0.5 * target[0, 2].norm() / 4
    assert training_loss(on_massive, target, "mse") > training_loss(on_ordinary, target, "mse")
    assert training_loss(on_massive, target, "token") < training_loss(on_ordinary, target, "token")
    assert training_loss(on_ordinary, target, "token") == pytest.approx(0.25 / 4, rel=1e-4)
    error, count = relative_error(on_ordinary, target, "token")
    assert count == 4 and error / count == pytest.approx(0.25 / 4, rel=1e-4)
    error, scale = relative_error(on_ordinary, target, "mse")
    assert error / scale == pytest.approx(float((on_ordinary - target).pow(2).sum() / target.pow(2).sum()))


@pytest.mark.parametrize("rollback", [True, False])
def test_training_that_makes_held_out_error_worse_is_rolled_back(rollback):
    """An absurd learning rate wrecks every block: with rollback each comes back exactly as pruned and the report
    lists it; without, the wrecked weights stay."""
    model = tiny_model("llama")
    spy, entry = _prune(model, steps=4, lr=10.0, rollback=rollback)
    _, blocks = find_blocks(model)
    assert entry["rollback"] is rollback
    for index, block in enumerate(blocks):
        same = all(torch.equal(weight.matrix(), spy.pruned[index, name]) for name, weight in prunable_weights(block).items())
        assert same is rollback, f"block {index}"
    for block in entry["blocks"]:
        assert block["kept"] is not rollback
        if rollback:
            assert block["held_out_error_after"] == block["held_out_error_before"] < block["held_out_error_trained"]
        else:
            assert block["held_out_error_after"] > block["held_out_error_before"]
    assert entry["rolled_back_blocks"] == (list(range(len(blocks))) if rollback else [])


def test_reconstruction_line_names_the_rolled_back_blocks():
    from llmprune.cli.summary import reconstruction_line
    entry = {"mean_held_out_error_before": 0.5, "mean_held_out_error_after": 0.25, "seconds": 3.0,
             "blocks": [{}, {}, {}], "rolled_back_blocks": [2]}
    assert reconstruction_line(entry) == ("block reconstruction: mean held-out block error 0.5 -> 0.25 (3.0 s); "
                                          "1 of 3 blocks rolled back (training made them worse): [2]")
    assert "rolled back" not in reconstruction_line(dict(entry, rolled_back_blocks=[]))
    assert reconstruction_line(None) is None


def test_without_steps_nothing_changes_but_the_errors_are_reported():
    reference, model = tiny_model("llama"), tiny_model("llama")
    calibration = random_calibration(8, 32)
    llmprune.prune(reference, None, method="wanda", sparsity=0.5, calibration_ids=calibration, progress=False, device="cpu")
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=calibration, progress=False,
                            device="cpu", reconstruct=True, reconstruct_steps=0)
    for a, b in zip(reference.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    blocks = report["reconstruct"]["blocks"]
    assert all(b["held_out_error_before"] == b["held_out_error_after"] > 0 for b in blocks)


def test_magnitude_pruning_gets_calibration_inputs_for_reconstruction():
    model = tiny_model("llama")
    report = llmprune.prune(model, None, method="magnitude", sparsity=0.6, calibration_ids=random_calibration(8, 32),
                            progress=False, device="cpu", reconstruct=True, reconstruct_steps=10, reconstruct_lr=1e-3)
    assert report["calibration"]["nsamples"] == 8
    blocks = report["reconstruct"]["blocks"]
    assert len(blocks) == 2 and all(b["held_out_error_after"] != b["held_out_error_before"] for b in blocks)
    assert report["total_sparsity"] == pytest.approx(0.6, abs=0.01)


def test_two_four_pattern_survives_reconstruction_in_bfloat16():
    model = tiny_model("qwen3").to(torch.bfloat16)
    spy, _ = _prune(model, method="wanda", pattern="2:4", parts="separate")
    for (index, name), pruned in spy.pruned.items():
        final = dict(prunable_weights(find_blocks(model)[1][index]))[name].matrix()
        assert final.dtype == torch.bfloat16
        assert torch.equal(final != 0, pruned != 0)
        groups = (final != 0).reshape(final.shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2


@pytest.mark.parametrize("family,options", [
    ("llama", dict(method="sparsegpt", sparsity=0.6, reconstruct_target="teacher")),
    ("gpt2", dict(method="wanda", pattern="2:4", reconstruct_parts="separate", reconstruct_target="local", batch_size=2)),
], ids=["llama-teacher", "gpt2-separate-chunked"])
def test_streaming_and_in_memory_write_the_same_files_with_reconstruction(tmp_path, family, options):
    source = _model_folder(tmp_path, family)
    calibration = random_calibration(6, 32)
    options = dict(options, reconstruct=True, reconstruct_steps=6, reconstruct_batch_size=2, reconstruct_lr=1e-3)
    expected = _in_memory(source, tmp_path / "memory", calibration, **options)
    report = llmprune.prune_folder(str(source), tmp_path / "stream", calibration_ids=calibration, progress=False,
                                   device="cpu", **options)
    memory_files, stream_files = _files(tmp_path / "memory"), _files(tmp_path / "stream")
    assert sorted(memory_files) == sorted(stream_files)
    for name in memory_files:
        assert memory_files[name] == stream_files[name], name
    assert report["reconstruct"]["blocks"] == expected["reconstruct"]["blocks"]
    assert expected["reconstruct"]["mean_held_out_error_after"] != expected["reconstruct"]["mean_held_out_error_before"]


def test_held_out_windows_are_the_last_ones_and_batches_stay_inside_chunks():
    chunks = [torch.zeros(3, 4, 2), torch.zeros(5, 4, 2)]
    from llmprune.engine import BlockInputs

    train, held = plan_micro_batches([BlockInputs(c, (), {}) for c in chunks], batch_size=2)
    assert [(b.chunk, b.start, b.stop) for b in train] == [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 4)]
    assert [(b.chunk, b.start, b.stop) for b in held] == [(1, 4, 5)]


@pytest.mark.parametrize("options,message", [
    (dict(reconstruct_target="dense"), "reconstruct-target"),
    (dict(reconstruct_parts="layers"), "reconstruct-parts"),
    (dict(reconstruct_lr=0.0), "reconstruct-lr"),
    (dict(reconstruct_batch_size=0), "reconstruct-batch-size"),
    (dict(reconstruct_steps=-1), "reconstruct-steps"),
    (dict(reconstruct_loss="l1"), "reconstruct-loss"),
])
def test_bad_settings_fail_before_any_work(options, message):
    with pytest.raises(LLMPruneError, match=message):
        llmprune.prune(tiny_model("llama"), None, sparsity=0.5, calibration_ids=random_calibration(), progress=False,
                       reconstruct=True, **options)


def test_command_line_flags_reach_the_report(tmp_path):
    from llmprune.cli import main

    source = _model_folder(tmp_path, "llama")
    calibration = tmp_path / "calib.txt"
    calibration.write_text("the cat sat on the mat and the dog ran in the park while birds sang. " * 200, encoding="utf-8")
    report_path = tmp_path / "report.json"
    code = main(["--model", str(source), "--method", "wanda", "--sparsity", "0.5", "--calibration", str(calibration),
                 "--nsamples", "4", "--seqlen", "16", "--device", "cpu", "--no-progress", "--report", str(report_path),
                 "--reconstruct", "--reconstruct-target", "local", "--reconstruct-parts", "separate",
                 "--reconstruct-steps", "3", "--reconstruct-lr", "0.001", "--reconstruct-batch-size", "2",
                 "--reconstruct-norms", "--reconstruct-loss", "token"])
    assert code == 0
    import json

    entry = json.loads(report_path.read_text())["reconstruct"]
    assert (entry["target"], entry["parts"], entry["steps"], entry["lr"], entry["batch_size"], entry["norms"],
            entry["loss"]) == ("local", "separate", 3, 0.001, 2, True, "token")


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "gpt_oss"])
@pytest.mark.parametrize("parts", ["block", "separate"])
def test_fused_experts_keep_their_masks(family, parts):
    from tests.moe_helpers import tiny_moe

    model = tiny_moe(family)
    spy, entry = _prune(model, parts=parts)
    _, blocks = find_blocks(model)
    moved = 0
    for (index, name), pruned in spy.pruned.items():
        final = prunable_weights(blocks[index])[name].matrix()
        assert torch.equal(final != 0, pruned != 0), f"block {index} {name}: the mask changed"
        moved += int((final != pruned).sum())
    assert moved > 0 and len(entry["blocks"]) == len(blocks)
