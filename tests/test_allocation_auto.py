"""Allocations through the API: the depth ramp, and `auto` choosing on held-out calibration windows only."""
from __future__ import annotations

import pytest
import torch

import llmprune
from llmprune.errors import LLMPruneError
from tests.conftest import random_calibration, tiny_model


def test_depth_ramp_through_the_api_rises_with_depth_and_keeps_the_mean():
    model = tiny_model("llama")
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, allocation="ramp", ramp_step=0.1,
                            calibration_ids=random_calibration(), progress=False)
    first, second = report["depth_ramp"]["block_sparsity"]
    assert second > first and (first + second) / 2 == pytest.approx(0.5)
    assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    for name, sparsity in report["layers"].items():
        block = int(name.split(".")[2])
        assert sparsity == pytest.approx(report["depth_ramp"]["block_sparsity"][block], abs=1 / 64 + 1e-6)


def test_auto_scores_every_candidate_on_heldout_training_windows_and_uses_the_best(monkeypatch):
    import llmprune.allocation.auto as auto_module

    calls = []
    original = auto_module.heldout_loss

    def spy(model, windows, batch_size=4):
        calls.append(windows.clone())
        return original(model, windows, batch_size)

    monkeypatch.setattr(auto_module, "heldout_loss", spy)
    ids = random_calibration(nsamples=8)
    model = tiny_model("llama")
    report = llmprune.prune(model, None, method="wanda", sparsity=0.6, allocation="auto", calibration_ids=ids, progress=False)
    auto = report["allocation_auto"]
    assert len(auto["candidates"]) == len(calls) == 5
    best = min(auto["candidates"], key=lambda c: c["heldout_loss"])
    assert auto["chosen"] == best["candidate"]
    # The held-out windows are calibration windows set aside (never the test split), and they calibrate nothing.
    assert all(torch.equal(c, ids[-2:]) for c in calls)
    assert report["calibration"]["nsamples"] == 8
    assert report["total_sparsity"] == pytest.approx(0.6, abs=0.01)
    # The final run used the chosen candidate: its allocation entry is the one in the report.
    kind = auto["chosen"].split()[0]
    assert ("owl" in report) == (kind == "owl") and ("depth_ramp" in report) == (kind == "depth")
    if kind == "owl":
        assert report["owl"]["lambda"] == float(auto["chosen"].split("=")[1])


def test_auto_restores_the_weights_between_candidates():
    """Every candidate starts from the dense weights: the uniform candidate's loss equals a plain uniform run's."""
    from llmprune.allocation.auto import heldout_loss

    ids = random_calibration(nsamples=8)
    report = llmprune.prune(tiny_model("llama"), None, method="sparsegpt", sparsity=0.6, allocation="auto",
                            calibration_ids=ids, progress=False)
    plain = tiny_model("llama")
    llmprune.prune(plain, None, method="sparsegpt", sparsity=0.6, calibration_ids=ids[:-2], progress=False)
    uniform = [c for c in report["allocation_auto"]["candidates"] if c["candidate"] == "uniform"][0]
    assert uniform["heldout_loss"] == pytest.approx(heldout_loss(plain, ids[-2:]), abs=1e-6)
    owl = [c for c in report["allocation_auto"]["candidates"] if c["candidate"].startswith("owl")][0]
    assert owl["heldout_loss"] != uniform["heldout_loss"]


def test_auto_reads_the_train_split_with_another_seed(monkeypatch):
    import llmprune.calibration as calibration

    seeds = []

    def recording(tokenizer, source="wikipedia", nsamples=128, seqlen=2048, seed=0):
        seeds.append((source, nsamples, seed))
        return random_calibration(nsamples, seqlen, seed=seed)

    monkeypatch.setattr(calibration, "calibration_batch", recording)
    llmprune.prune(tiny_model("llama"), object(), method="wanda", sparsity=0.5, allocation="auto", nsamples=4, seqlen=32,
                   heldout_windows=3, calibration="some.txt", seed=5, progress=False)
    assert ("some.txt", 4, 5) in seeds and ("some.txt", 3, 6) in seeds


def test_allocations_refuse_patterns_and_streaming(tmp_path):
    with pytest.raises(LLMPruneError, match="N:M"):
        llmprune.prune(tiny_model(), None, pattern="2:4", allocation="ramp", calibration_ids=random_calibration(), progress=False)
    with pytest.raises(LLMPruneError, match="two allocations"):
        llmprune.prune(tiny_model(), None, sparsity=0.5, owl=True, allocation="ramp", calibration_ids=random_calibration(), progress=False)
    with pytest.raises(LLMPruneError, match="stream"):
        llmprune.prune_folder("nowhere", tmp_path / "out", sparsity=0.5, allocation="auto")
