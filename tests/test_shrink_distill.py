"""Distillation after shrinking: the shrunk model moves towards the dense model's next-token distributions."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import random_calibration
from tests.test_shrink import build, logits, save_and_reload
from llmprune.errors import LLMPruneError
from llmprune.structured import shrink
from llmprune.structured.distill import distill, token_kl


def test_token_kl_is_the_mean_kl_of_the_next_token_distributions():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 7, generator=generator)
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(token_kl(student, teacher), expected)
    assert float(token_kl(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def sharp(model):
    """A random model's next-token distributions are nearly uniform: a larger final norm sharpens them."""
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    return model


def test_distillation_lowers_the_kl_to_the_dense_model(tmp_path):
    ids = random_calibration(16, 16, seed=5)
    dense, plain, healed = (sharp(build("llama", layers=2)) for _ in range(3))
    common = dict(ratio=0.3, units="mlp", calibration_ids=ids, progress=False, device="cpu", multiple_of=8)
    shrink(plain, **common)
    report = shrink(healed, distill_steps=30, distill_lr=1e-4, **common)
    entry = report["distill"]
    assert entry["steps"] == 30 and entry["train_windows"] == 14 and entry["held_out_windows"] == 2
    assert entry["train_kl_last"] < entry["train_kl_first"]
    train = ids[:14]
    assert float(token_kl(logits(healed, train), logits(dense, train))) < float(token_kl(logits(plain, train), logits(dense, train)))
    assert [p.shape for p in healed.parameters()] == [p.shape for p in plain.parameters()]
    assert {p.dtype for p in healed.parameters()} == {torch.float32}
    torch.testing.assert_close(logits(save_and_reload(healed, tmp_path / "healed"), ids[:2]), logits(healed, ids[:2]), rtol=0, atol=1e-5)


def test_no_steps_change_nothing():
    model = build("llama", layers=2)
    teacher = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    entry = distill(model, teacher, random_calibration(4, 8), steps=0, lr=1e-3, batch_size=2, device="cpu", progress=False)
    assert entry["held_out_kl_before"] == pytest.approx(0.0, abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_bfloat16_model_trains_in_float32_and_returns_to_bfloat16():
    model = build("llama", layers=2).to(torch.bfloat16)
    teacher = build("llama", layers=2, seed=1).to(torch.bfloat16)
    entry = distill(model, teacher, random_calibration(4, 8), steps=2, lr=1e-3, batch_size=2, device="cpu", progress=False)
    assert entry["train_kl_first"] is not None
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} == {p.dtype for p in teacher.parameters()}


@pytest.mark.parametrize("kwargs, message", [
    (dict(distill_steps=-1), "--distill-steps must be at least 0"),
    (dict(distill_lr=0.0), "--distill-lr must be positive"),
    (dict(distill_batch_size=0), "--distill-batch-size must be at least 1"),
])
def test_bad_distillation_options_fail_in_one_line(kwargs, message):
    with pytest.raises(LLMPruneError, match=message) as info:
        shrink(build("llama"), ratio=0.25, calibration_ids=random_calibration(), progress=False, device="cpu", **kwargs)
    assert "\n" not in str(info.value)
