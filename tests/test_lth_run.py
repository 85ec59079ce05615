"""`llmprune lth` end to end on tiny data: the ladder, rewinding, no regrowth, the controls as
defined, resume after a kill, the winning ticket, the sum-of-two toy."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.tickets.pruning_rules import GlobalRule, LayerwiseRule
from llmprune.tickets.scratch import vision_domain
from llmprune.tickets.scratch.lth_options import LTHOptions
from llmprune.tickets.scratch.vision_data import load_data
from llmprune.tickets.scratch.vision_domain import VisionDomain, run_lth
from llmprune.tickets.scratch.vision_models import build_model, conv_net, initialise, lenet_300_100, prunable_weights
from llmprune.tickets.ticket_masks import load_masks

from lth_helpers import tiny_idx_folder, tiny_settings


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_idx_folder(tmp_path_factory.mktemp("lth") / "idx")


ORIGINAL_TRAIN = VisionDomain.train  # recorders wrap these, never each other
ORIGINAL_TRAIN_MANY = VisionDomain.train_many


class SimulatedKill(BaseException):
    """Like SIGKILL for the run: not an Exception, so nothing on the way catches it."""


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder:
    """Wraps VisionDomain.train and .train_many: each job's masks, starting and final weights, and
    which jobs trained together (``batch``: the index of the stacked call, None for one model)."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        self.calls, self.fail_on_call, self.batches = [], fail_on_call, 0
        recorder = self

        def train(domain, model, masks, seed, on_step, desc):
            if recorder.fail_on_call is not None and len(recorder.calls) + 1 == recorder.fail_on_call:
                raise SimulatedKill
            start = state_of(model)
            result = ORIGINAL_TRAIN(domain, model, masks, seed, on_step, desc)
            recorder.calls.append({"desc": desc, "masks": masks, "start": start, "end": state_of(model),
                                   "seed": seed, "batch": None, "result": result})
            return result

        def train_many(domain, models, masks, seeds, descs, snapshot_step=0):
            recorder.batches += 1
            if recorder.fail_on_call is not None and recorder.batches == recorder.fail_on_call:
                raise SimulatedKill
            starts = [state_of(m) for m in models]
            results = ORIGINAL_TRAIN_MANY(domain, models, masks, seeds, descs, snapshot_step)
            for model, job_masks, seed, desc, start, result in zip(models, masks, seeds, descs, starts, results):
                recorder.calls.append({"desc": desc, "masks": job_masks, "start": start, "end": state_of(model),
                                       "seed": seed, "batch": recorder.batches, "result": result})
            return results

        monkeypatch.setattr(VisionDomain, "train", train)
        monkeypatch.setattr(VisionDomain, "train_many", train_many)

    def by_desc(self) -> dict:
        return {c["desc"]: c for c in self.calls}


def test_lenet_ladder_matches_the_paper():
    params = prunable_weights(lenet_300_100())
    assert sum(p.numel() for p in params.values()) == 266_200
    names = list(params)
    rule = LayerwiseRule({n: p.numel() for n, p in params.items()},
                         {n: 0.1 if n == names[-1] else 0.2 for n in names}, rounds=18)
    remaining = [1.0] + [1 - level for level in rule.levels]
    for k, paper in {3: 0.513, 7: 0.211, 12: 0.070, 15: 0.036, 18: 0.019}.items():
        assert round(remaining[k], 3) == paper, k
        exact = (265_200 * 0.8 ** k + 1_000 * 0.9 ** k) / 266_200
        assert abs(remaining[k] - exact) < 1e-4
    # the output layer shrinks at its own (half) rate
    assert rule.counts[1][names[-1]] == 900 and rule.counts[1][names[0]] == round(784 * 300 * 0.8)


def test_layerwise_masks_nest_and_keep_exact_counts():
    torch.manual_seed(0)
    params = {"a": torch.randn(10, 10), "b": torch.randn(5, 4)}
    rule = LayerwiseRule({"a": 100, "b": 20}, {"a": 0.5, "b": 0.25}, rounds=None, min_keep=2)
    assert rule.counts[-1] == {"a": 2, "b": 2} and rule.counts[1] == {"a": 50, "b": 15}
    current = None
    for r in range(1, rule.rounds + 1):
        masks = rule.masks(params, r, current)
        assert {n: int(m.sum()) for n, m in masks.items()} == rule.counts[r]
        if current is not None:
            assert all(torch.all(current[n] | ~masks[n]) for n in masks)  # pruned weights stay pruned
        # within a layer, every survivor outweighs every pruned weight that was alive
        alive = params["a"].abs()[masks["a"]]
        dropped = params["a"].abs()[~masks["a"] & (current["a"] if current else torch.ones_like(masks["a"]))]
        assert dropped.numel() == 0 or dropped.max() <= alive.min()
        current = masks
    glob = GlobalRule([0.5, 0.75])
    assert abs(sum(int(m.sum()) for m in glob.masks(params, 2).values()) - 30) <= 1


def test_initialisation_is_gaussian_glorot_and_biases_are_not_prunable():
    model = initialise(lenet_300_100(), seed=0)
    first = model[1].requires_grad_(False)
    assert torch.all(first.bias == 0)
    assert abs(float(first.weight.std()) - math.sqrt(2 / (784 + 300))) < 2e-4
    assert abs(float(first.weight.mean())) < 2e-4
    conv = initialise(conv_net([4], (3, 8, 8)), seed=0).requires_grad_(False)
    assert abs(float(conv[0].weight.std()) - math.sqrt(2 / (3 * 9 + 4 * 9))) < 0.03
    assert all(name.endswith(".weight") for name in prunable_weights(conv))
    assert len(prunable_weights(conv)) == 5  # two convs and three fully connected layers
    assert torch.equal(initialise(lenet_300_100(), 1)[1].weight, initialise(lenet_300_100(), 1)[1].weight)


def test_no_regrowth_after_any_optimiser_step(folder):
    data = load_data(str(folder), seed=0, validation_size=40)
    domain = VisionDomain(data, lambda s: build_model("mlp", data.input_shape, data.classes, [12, 8], s),
                          iterations=30, lr=5e-2, batch_size=20, eval_every=10, progress=False)
    model = domain.new_model(0)
    params = prunable_weights(model)
    masks = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.6 for n, p in params.items()}
    checked = []

    def after_step(step):
        checked.append(step)
        for n, p in params.items():
            assert torch.all(p[~masks[n]] == 0), (step, n)

    result = domain.train(model, masks, 0, after_step, "t")
    assert checked == list(range(1, 31))
    assert result["curve"]["iteration"] == [10, 20, 30]
    best = min(range(3), key=lambda i: result["curve"]["validation_loss"][i])
    assert result["early_stop_iteration"] == result["curve"]["iteration"][best]
    assert result["test_accuracy"] == result["curve"]["test_accuracy"][best]
    assert result["final_test_accuracy"] == result["curve"]["test_accuracy"][-1]


def test_rewind_and_controls_as_defined(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    report = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run", controls="all")))
    calls = recorder.by_desc()
    assert sorted(calls) == sorted(["ticket r0", "ticket r1", "ticket r2"]
                                   + [f"{c} r{r}" for r in (1, 2) for c in ("reinit", "random-mask", "one-shot")])
    initial = calls["ticket r0"]["start"]
    assert torch.equal(initial["1.weight"], build_model("mlp", (1, 8, 8), 4, [12, 8], 0)[1].weight)
    prunable = [k for k in initial if k.endswith("weight")]
    for r in (1, 2):
        ticket = calls[f"ticket r{r}"]
        # rewind: every parameter starts at exactly its initial value
        assert all(torch.equal(ticket["start"][k], v) for k, v in initial.items())
        for name, mask in ticket["masks"].items():
            assert torch.all(ticket["end"][name][~mask] == 0)
            assert not torch.equal(ticket["end"][name][mask], initial[name][mask])  # survivors trained
        reinit, random_mask, one_shot = (calls[f"{c} r{r}"] for c in ("reinit", "random-mask", "one-shot"))
        # reinit: the ticket's mask, fresh weights (biases keep their initial zeros)
        assert all(torch.equal(reinit["masks"][n], ticket["masks"][n]) for n in prunable)
        assert all(not torch.equal(reinit["start"][n], initial[n]) for n in prunable)
        assert all(torch.equal(reinit["start"][k], initial[k]) for k in initial if k.endswith("bias"))
        # random mask: the same count in every layer, another pattern, the original initialisation
        for n in prunable:
            assert int(random_mask["masks"][n].sum()) == int(ticket["masks"][n].sum())
        assert any(not torch.equal(random_mask["masks"][n], ticket["masks"][n]) for n in prunable)
        assert all(torch.equal(random_mask["start"][k], v) for k, v in initial.items())
        # one-shot: the dense network's trained magnitudes, pruned straight to this round's counts
        dense_end = calls["ticket r0"]["end"]
        for n in prunable:
            kept = one_shot["masks"][n]
            assert int(kept.sum()) == int(ticket["masks"][n].sum())
            assert dense_end[n].abs()[~kept].max() <= dense_end[n].abs()[kept].min()
    # IMP masks shrink round by round
    m1, m2 = calls["ticket r1"]["masks"], calls["ticket r2"]["masks"]
    assert all(torch.all(m1[n] | ~m2[n]) for n in m1)
    row = report["rounds"][2]
    assert set(row["arms"]) == {"ticket", "reinit", "random-mask", "one-shot"}
    assert abs(row["remaining"] - sum(int(m.sum()) for m in m2.values()) / sum(m.numel() for m in m2.values())) < 1e-9


def test_late_rewind_to_step_k(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run", rounds=1, rewind="step:5")))
    calls = recorder.by_desc()
    data = load_data(str(folder), seed=0, validation_size=40)
    domain = VisionDomain(data, lambda s: build_model("mlp", data.input_shape, data.classes, [12, 8], s),
                          iterations=5, lr=5e-3, batch_size=20, eval_every=5, progress=False)
    model = domain.new_model(0)
    domain.train(model, None, 0, None, "k")  # the same seed: the same first five batches
    expected = model.state_dict()
    start = calls["ticket r1"]["start"]
    # the dense tickets train stacked (fused Adam, batched matmuls): the same weights up to float rounding
    for key, value in expected.items():
        torch.testing.assert_close(start[key], value, rtol=0, atol=1e-6)
    assert not torch.equal(start["1.weight"], calls["ticket r0"]["start"]["1.weight"])
    with pytest.raises(LLMPruneError, match="past the end"):
        run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "late", rewind="step:1000")))


def test_resume_after_kill_gives_the_same_report(folder, tmp_path, monkeypatch):
    settings = dict(controls="reinit", trials=2, parallel_jobs=1)  # one model at a time
    clean = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "clean", **settings)))
    Recorder(monkeypatch, fail_on_call=4)
    with pytest.raises(SimulatedKill):
        run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "killed", **settings)))
    assert len(list((tmp_path / "killed").glob("seed-*/*/metrics.json"))) == 3
    again = Recorder(monkeypatch)
    resumed = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "killed", **settings)))
    assert len(again.calls) == 2 * 5 - 3  # only the unfinished jobs ran
    for key in ("rounds", "matching", "trials", "arms"):
        assert resumed[key] == clean[key], key
    with pytest.raises(LLMPruneError, match="other settings.*protocol"):
        run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "killed", lr=1e-2, **settings)))


def test_cli_report_csv_plots_and_ticket(folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["lth", "--preset", "lenet", "--data", str(folder), "--hidden", "12,8", "--iterations", "40",
            "--eval-every", "10", "--rounds", "2", "--lr", "5e-3", "--batch-size", "20", "--validation-size", "40",
            "--trials", "2", "--controls", "reinit", "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tickets match the dense network down to" in printed
    report = json.loads((out / "lth_report.json").read_text())
    assert report["trials"] == [0, 1] and report["arms"] == ["ticket", "reinit"]
    for row in report["rounds"]:
        for arm, entry in row["arms"].items():
            for key in ("early_stop_iteration", "test_accuracy", "final_test_accuracy"):
                stat = entry[key]
                assert stat["min"] <= stat["mean"] <= stat["max"] and len(stat["per_trial"]) == 2
            assert 0 < entry["remaining"] <= 1
    assert "reinit" not in report["rounds"][0]["arms"]
    header = (out / "lth_report.csv").read_text().splitlines()[0]
    assert header.startswith("round,arm,remaining,early_stop_iteration_mean,early_stop_iteration_min")
    assert (out / "lth_report.md").read_text().count("\n| ") == len(report["rounds"]) + 1
    for name in ("lth_test_accuracy.png", "lth_early_stop.png", "lth_curves.png"):
        assert (out / name).stat().st_size > 1000


def test_ticket_saved_at_the_deepest_matching_round(folder, tmp_path, monkeypatch):
    # every round scores the same, so every round matches and the sparsest is the ticket
    real = vision_domain.summarise_curve
    monkeypatch.setattr(vision_domain, "summarise_curve", lambda curve, regression: {**real(curve, regression),
                                                                           "test_accuracy": 0.5})
    report = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run")))
    assert report["matching"]["down_to_round"] == 2 and report["ticket"]
    ticket = load_file(tmp_path / "run" / "ticket" / "initial_weights.safetensors")
    masks = load_file(tmp_path / "run" / "ticket" / "mask.safetensors")
    info = json.loads((tmp_path / "run" / "ticket" / "ticket.json").read_text())
    assert info["round"] == 2 and info["seed"] == 0
    stored = load_masks(tmp_path / "run" / "seed-0" / "ticket-r2" / "mask.pt")
    assert set(masks) == set(stored) and all(torch.equal(masks[k].bool(), stored[k]) for k in stored)
    # the ticket is the initial weights under the mask (biases untouched)
    initial = build_model("mlp", (1, 8, 8), 4, [12, 8], 0).state_dict()
    for key, value in initial.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(ticket[key], expected), key
    assert abs(sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
               - report["rounds"][2]["remaining"]) < 1e-12


def test_sum_of_two_finds_a_four_weight_ticket(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["lth", "--preset", "sum-of-two", "--iterations", "300", "--lr", "0.03", "--output", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "lth_report.json").read_text())
    final = report["rounds"][-1]
    assert set(final["arms"]) == {"ticket", "reinit", "permuted"}
    weights = report["surviving_weights"]["trial 0"]
    assert [len(weights[name]) for name in ("0.weight", "1.weight")] == [2, 2]  # four weights in all
    assert final["remaining"] == pytest.approx(4 / 600)
    # the ticket extrapolates to [1, 2] about as well as the full network; the permuted one cannot
    assert report["ticket_ood_rmse"] < 0.05 and report["full_ood_rmse"] < 0.05
    assert report["ticket_ood_rmse"] < report["full_ood_rmse"] + 0.02
    assert report["permuted_ticket_ood_rmse"] > 10 * max(report["ticket_ood_rmse"], 1e-3)
    assert "surviving weights (trial 0)" in printed and "permuted_ticket_ood_rmse" in printed
    with pytest.raises(LLMPruneError, match="makes its own data"):
        run_lth(LTHOptions(preset="sum-of-two", data="mnist1d", output=str(tmp_path / "x")))


def test_conv_preset_prunes_each_kind_of_layer_at_its_rate(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    report = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "conv", preset="conv2", hidden=None, rounds=1, lr=None,
                                               iterations=20)))
    masks = recorder.by_desc()["ticket r1"]["masks"]
    names = list(masks)
    assert len(names) == 5  # conv, conv, fc 256, fc 256, output
    share = {n: float(masks[n].float().mean()) for n in names}
    for n in names[:2]:
        assert abs(share[n] - 0.9) < 0.01  # convolutions: 10% per round
    for n in names[2:4]:
        assert abs(share[n] - 0.8) < 0.01  # fully connected: 20%
    assert abs(share[names[4]] - 0.9) < 0.01  # output: half of 20%
    assert report["protocol"]["lr"] == 2e-4 and report["protocol"]["batch_size"] == 20


def test_global_pruning_and_its_random_mask_control(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    report = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "global", pruning="global",
                                               controls="random-mask")))
    assert [round(row["remaining"], 3) for row in report["rounds"]] == [1.0, 0.8, 0.64]
    calls = recorder.by_desc()
    ticket, random_mask = calls["ticket r2"]["masks"], calls["random-mask r2"]["masks"]
    shares = [float(m.float().mean()) for m in ticket.values()]
    assert max(shares) - min(shares) > 0.01  # one threshold: layers end up at different shares
    assert all(int(random_mask[n].sum()) == int(ticket[n].sum()) for n in ticket)
