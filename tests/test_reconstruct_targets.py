"""What block reconstruction trains towards, against activations computed here by hand:

- ``teacher``: block i's targets are the dense model's own block-i outputs (the dense model run whole,
  its blocks' outputs recorded), so the teacher stream advances through every block, removed ones too;
- ``local``: block i's targets are the dense block i run on the pruned stream's inputs (recorded from the
  final pruned model, then fed to a copy of the dense block).

A spy on ``BlockReconstruction.after_prune`` records the targets the step trains against, per block."""
from __future__ import annotations

import copy

import pytest
import torch

import llmprune
from llmprune.reconstruct import BLOCK, BlockReconstruction
from llmprune.structured import shrink
from tests.conftest import random_calibration
from tests.test_shrink import build

CALIBRATION = random_calibration(nsamples=8, seqlen=16)
# The targets come from the same blocks on the same inputs, run in micro-batches instead of whole:
# only the summation order may differ. A wrong source is off by 1e-2 or more (checked below).
SAME = 1e-4


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def spy_on_targets(monkeypatch) -> dict[int, torch.Tensor]:
    """Block index -> the block-output targets reconstruction trains it towards (every window, in order)."""
    recorded: dict[int, torch.Tensor] = {}
    original = BlockReconstruction.after_prune

    def after_prune(self, context):
        recorded[context.index] = torch.cat([target[BLOCK].detach().clone() for target in self.targets])
        return original(self, context)

    monkeypatch.setattr(BlockReconstruction, "after_prune", after_prune)
    return recorded


def block_outputs(model, ids) -> list[torch.Tensor]:
    """Every block's output when ``model`` runs on ``ids``, recorded by the test's own hooks."""
    outputs = []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach()))
               for block in model.model.layers]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return outputs


@torch.no_grad()
def dense_blocks_on_the_pruned_stream(dense, pruned, ids) -> list[torch.Tensor]:
    """Dense block i run on the inputs block i receives in the pruned model (the same keyword arguments)."""
    calls = []
    handles = [block.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
               for block in pruned.model.layers]
    pruned(ids)
    for handle in handles:
        handle.remove()
    outputs = []
    for block, (args, kwargs) in zip(dense.model.layers, calls):
        out = block(*args, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@pytest.mark.parametrize("target", ["teacher", "local"])
def test_pruning_reconstruction_targets_are_the_dense_models_or_the_dense_blocks_on_the_pruned_stream(monkeypatch, target):
    model = build("llama", layers=3)
    dense = copy.deepcopy(model)
    recorded = spy_on_targets(monkeypatch)
    llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False, reconstruct=True,
                   reconstruct_target=target, reconstruct_steps=3, reconstruct_lr=1e-2)
    teacher = block_outputs(dense, CALIBRATION)
    local = dense_blocks_on_the_pruned_stream(dense, model, CALIBRATION)
    expected, other = (teacher, local) if target == "teacher" else (local, teacher)
    assert sorted(recorded) == [0, 1, 2]
    for index in range(3):
        assert relative(recorded[index], expected[index]) < SAME, (index, relative(recorded[index], expected[index]))
    for index in (1, 2):  # the two sources part after block 0, so the check above can tell them apart
        assert relative(other[index], expected[index]) > 100 * SAME


def test_shrink_reconstruction_teacher_stream_advances_through_removed_blocks(monkeypatch):
    """A block the shrink removes still moves the teacher stream on: the next kept block's target is the
    dense model's output of that block, not the shrunk stream's."""
    model = build("llama", layers=4)
    with torch.no_grad():  # block 1 adds little: the block the angular score removes
        model.model.layers[1].self_attn.o_proj.weight.mul_(0.3)
        model.model.layers[1].mlp.down_proj.weight.mul_(0.3)
    dense = copy.deepcopy(model)
    recorded = spy_on_targets(monkeypatch)
    report = shrink(model, ratio=0.25, units="blocks", calibration_ids=CALIBRATION, reconstruct=True,
                    reconstruct_target="teacher", reconstruct_steps=2, progress=False, device="cpu")
    assert report["removed_blocks"] == [1]
    teacher = block_outputs(dense, CALIBRATION)
    assert sorted(recorded) == [0, 2, 3]
    for index in (0, 2, 3):
        assert relative(recorded[index], teacher[index]) < SAME, (index, relative(recorded[index], teacher[index]))
    # Skipping block 1 in the teacher stream would change block 2's target by this much: far above SAME.
    with torch.no_grad():
        skipped = dense.model.layers[2]
        calls = []
        handle = skipped.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
        dense(CALIBRATION)
        handle.remove()
        out = skipped(teacher[0], **calls[0])
        assert relative(out[0] if isinstance(out, tuple) else out, teacher[2]) > 100 * SAME
