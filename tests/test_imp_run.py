"""IMP end to end on a tiny random BERT and a synthetic task: masks hold during training,
rewinding restores the pretrained values, a killed run resumes to the same report."""
import json

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.tickets.bert import bert_domain, fine_tuning
from llmprune.tickets.bert.bert_domain import run_imp
from llmprune.tickets.bert.encoder import load_classifier, prunable_parameters
from llmprune.tickets.bert.imp_options import IMPOptions
from llmprune.tickets.ticket_masks import load_masks
from tests.imp_helpers import synthetic_task_file, tiny_bert_folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imp")
    return tiny_bert_folder(folder / "tiny"), synthetic_task_file(folder / "task.csv", 160)


def config(assets, output, **overrides) -> IMPOptions:
    model, task = assets
    values = dict(model=str(model), task=str(task), output=str(output), rounds=2, seeds=1, epochs=1,
                  lr=1e-3, batch_size=16, progress=False, device="cpu")
    values.update(overrides)
    return IMPOptions(**values)


class SimulatedKill(BaseException):
    """Like SIGKILL for the run: not an Exception, so nothing on the way catches it."""


class Recorder:
    """Wraps fine_tune: the weights each job starts from (before its mask) and ends with."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        self.calls, self.fail_on_call, self.real = [], fail_on_call, fine_tuning.fine_tune
        monkeypatch.setattr(bert_domain, "fine_tune", self)

    def __call__(self, model, data, settings, masks, seed, on_step=None, desc=""):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise SimulatedKill  # a kill in the middle of a job
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        steps = self.real(model, data, settings, masks, seed, on_step, desc)
        end = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.calls.append({"desc": desc, "masks": masks, "start": start, "end": end})
        return steps


def test_masks_hold_and_rewind_restores_pretrained(assets, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_imp(config(assets, tmp_path / "run", baselines=["random-prune", "random-reinit", "one-shot"]))
    model, _, _ = load_classifier(str(assets[0]), 2, seed=0)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prunable = set(prunable_parameters(model))
    by_desc = {c["desc"]: c for c in recorder.calls}
    assert sorted(by_desc) == sorted(["imp r0", "imp r1", "imp r2"] + [f"{b} r{r}" for r in (1, 2)
                                      for b in ("random-prune", "random-reinit", "one-shot")])
    dense_end = by_desc["imp r0"]["end"]
    for desc in ("imp r1", "imp r2", "random-prune r1", "one-shot r2"):
        call = by_desc[desc]
        # rewind: every weight (the head included) starts at its pretrained / initial value
        for key, value in initial.items():
            assert torch.equal(call["start"][key], value), (desc, key)
        for name, mask in call["masks"].items():
            trained = call["end"][name]
            assert torch.all(trained[~mask] == 0), (desc, name)  # exact zeros after the last step
            assert not torch.equal(trained[mask], initial[name][mask])  # the survivors did train
    reinit = by_desc["random-reinit r1"]["start"]
    assert all(not torch.equal(reinit[n], initial[n]) for n in prunable)
    assert torch.equal(reinit["bert.embeddings.word_embeddings.weight"], initial["bert.embeddings.word_embeddings.weight"])
    # the mask never touches embeddings or the classifier: no new zeros appear there (the
    # padding row of the word embeddings is zero from the start)
    for key in ("bert.embeddings.word_embeddings.weight", "classifier.weight"):
        assert int((by_desc["imp r2"]["end"][key] == 0).sum()) == int((initial[key] == 0).sum())
    assert set(by_desc["imp r2"]["masks"]) == prunable
    # IMP masks shrink round by round, and the r1 mask is the dense model's magnitudes at 10%
    m1, m2 = by_desc["imp r1"]["masks"], by_desc["imp r2"]["masks"]
    assert all(torch.all(m1[n] | ~m2[n]) for n in m1)
    flat = torch.cat([dense_end[n].abs().flatten() for n in m1])
    kept = torch.cat([m1[n].flatten() for n in m1])
    assert flat[~kept].max() <= flat[kept].min()
    assert abs(1 - kept.float().mean().item() - 0.1) < 1e-3


def test_ticket_folder_holds_pretrained_weights_under_the_mask(assets, tmp_path, monkeypatch):
    # make every level "matching" so that the sparsest one becomes the ticket
    monkeypatch.setattr(bert_domain, "evaluate", lambda *a, **k: {"accuracy": 0.5, "f1": 0.5})
    report = run_imp(config(assets, tmp_path / "run"))
    assert report["highest_matching_sparsity"] == pytest.approx(0.2) and report["ticket"]
    saved = json.loads((tmp_path / "run" / "ticket" / "llmprune_report.json").read_text())
    assert saved["sparsity"] == pytest.approx(0.2)
    ticket, _, _ = load_classifier(report["ticket"], 2)  # dense or sparse folder alike
    model, _, _ = load_classifier(str(assets[0]), 2, seed=0)
    masks = load_masks(tmp_path / "run" / "seed-0" / "imp-r2" / "mask.pt")
    ticket_state, pretrained = ticket.state_dict(), model.state_dict()
    for key, value in pretrained.items():
        if key in masks:
            assert torch.equal(ticket_state[key], value * masks[key])
        else:
            assert torch.equal(ticket_state[key], value), key  # embeddings, biases, initial head


def test_resume_after_kill_gives_the_same_report(assets, tmp_path, monkeypatch):
    settings = dict(seeds=2, baselines=["random-prune"])
    clean = run_imp(config(assets, tmp_path / "clean", **settings))
    Recorder(monkeypatch, fail_on_call=5)
    with pytest.raises(SimulatedKill):
        run_imp(config(assets, tmp_path / "killed", **settings))
    assert len(list((tmp_path / "killed").glob("seed-*/*/metrics.json"))) == 4
    again = Recorder(monkeypatch)
    resumed = run_imp(config(assets, tmp_path / "killed", **settings))
    assert len(again.calls) == 2 * 5 - 4  # only the unfinished jobs ran
    for key in ("rows", "dense", "highest_matching_sparsity", "seeds", "metric"):
        assert resumed[key] == clean[key], key
    with pytest.raises(LLMPruneError, match="other settings.*lr"):
        run_imp(config(assets, tmp_path / "killed", lr=5e-4, **settings))


def test_late_rewind_to_step_k_keeps_the_initial_head(assets, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_imp(config(assets, tmp_path / "run", rounds=1, rewind="step:2"))
    model, _, _ = load_classifier(str(assets[0]), 2, seed=0)
    initial = model.state_dict()
    rewind = torch.load(tmp_path / "run" / "seed-0" / "rewind.pt", weights_only=True)
    start = {c["desc"]: c["start"] for c in recorder.calls}["imp r1"]
    assert all(torch.equal(start[k], rewind[k]) for k in rewind)
    assert torch.equal(start["classifier.weight"], initial["classifier.weight"])
    # the body moved during the first two steps, so it is not the pretrained one
    assert not torch.equal(start["bert.pooler.dense.weight"], initial["bert.pooler.dense.weight"])
    with pytest.raises(LLMPruneError, match="past the end"):
        run_imp(config(assets, tmp_path / "late", rounds=1, rewind="step:1000"))
    with pytest.raises(LLMPruneError, match="unknown --rewind"):
        run_imp(config(assets, tmp_path / "bad", rounds=1, rewind="step:x"))
