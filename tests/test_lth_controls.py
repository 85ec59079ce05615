"""`llmprune lth` with late rewinding, against what the test records itself: every control that keeps the
rewind weights starts from the saved rewind point (not the initialisation), and every job of a seed, ticket
or control, in every round, trains on the same batches in the same order."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmprune.tickets.scratch.lth_options import LTHOptions
from llmprune.tickets.scratch.stacked import StackedNet
from llmprune.tickets.scratch.vision_domain import VisionDomain, run_lth

from lth_helpers import tiny_idx_folder, tiny_settings

ORIGINAL_TRAIN = VisionDomain.train
ORIGINAL_TRAIN_MANY = VisionDomain.train_many
ORIGINAL_FORWARD = StackedNet.forward
# both ways of training: one model at a time, and the jobs of a round stacked (the default)
PATHS = pytest.mark.parametrize("parallel_jobs", [1, None], ids=["one-model", "stacked"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_idx_folder(tmp_path_factory.mktemp("lth-controls") / "idx")


def record_jobs(monkeypatch) -> dict[str, dict]:
    """desc ("ticket r1", "random-mask r2", ...) -> the job's starting state and the inputs of every
    training step (recorded by a forward pre-hook while the model is in training mode)."""
    jobs: dict[str, dict] = {}

    def train(domain, model, masks, seed, on_step, desc):
        batches: list[torch.Tensor] = []
        handle = model.register_forward_pre_hook(lambda m, args: batches.append(args[0].detach().clone()) if m.training else None)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            return ORIGINAL_TRAIN(domain, model, masks, seed, on_step, desc)
        finally:
            handle.remove()
            jobs[desc] = {"start": start, "batches": batches}

    def train_many(domain, models, masks, seeds, descs, snapshot_step=0):
        stacked_batches: list[torch.Tensor] = []

        def forward(net, x, shared=False):
            if not shared:  # a training step: job k's inputs are x[k]
                stacked_batches.append(x.detach().clone())
            return ORIGINAL_FORWARD(net, x, shared)

        starts = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
        monkeypatch.setattr(StackedNet, "forward", forward)
        try:
            return ORIGINAL_TRAIN_MANY(domain, models, masks, seeds, descs, snapshot_step)
        finally:
            monkeypatch.setattr(StackedNet, "forward", ORIGINAL_FORWARD)
            for k, desc in enumerate(descs):
                jobs[desc] = {"start": starts[k], "batches": [b[k] for b in stacked_batches]}

    monkeypatch.setattr(VisionDomain, "train", train)
    monkeypatch.setattr(VisionDomain, "train_many", train_many)
    return jobs


@PATHS
def test_controls_start_from_the_late_rewind_point(folder, tmp_path, monkeypatch, parallel_jobs):
    jobs = record_jobs(monkeypatch)
    output = tmp_path / "run"
    run_lth(LTHOptions(**tiny_settings(folder, output, rounds=2, rewind="step:5", controls="all",
                                      parallel_jobs=parallel_jobs)))
    rewind = torch.load(Path(output) / "seed-0" / "rewind.pt", weights_only=True)
    initial = jobs["ticket r0"]["start"]
    assert all(not torch.equal(rewind[k], initial[k]) for k in rewind if k.endswith("weight"))  # 5 steps moved them
    for r in (1, 2):
        for kind in ("ticket", "random-mask", "one-shot"):  # the rewind weights under their own masks
            start = jobs[f"{kind} r{r}"]["start"]
            assert all(torch.equal(start[k], rewind[k]) for k in rewind), f"{kind} r{r}"
        fresh = jobs[f"reinit r{r}"]["start"]  # fresh weights; biases keep their rewind values
        for k in rewind:
            assert torch.equal(fresh[k], rewind[k]) == k.endswith("bias"), f"reinit r{r} {k}"


@PATHS
def test_every_job_of_a_seed_sees_the_same_batches_in_the_same_order(folder, tmp_path, monkeypatch, parallel_jobs):
    jobs = record_jobs(monkeypatch)
    run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run", rounds=2, controls="reinit,random-mask",
                                      parallel_jobs=parallel_jobs)))
    reference = jobs["ticket r0"]["batches"]
    assert len(reference) == 40 and not torch.equal(reference[0], reference[1])
    assert sorted(jobs) == sorted(["ticket r0"] + [f"{kind} r{r}" for r in (1, 2) for kind in ("ticket", "reinit", "random-mask")])
    for desc, job in jobs.items():
        assert len(job["batches"]) == len(reference), desc
        assert all(torch.equal(a, b) for a, b in zip(job["batches"], reference)), f"{desc}: another data order"
