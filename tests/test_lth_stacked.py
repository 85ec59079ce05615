"""`llmprune lth` with independent jobs trained as one stacked model: the same jobs as one model at a
time, pruned weights never regrow, jobs never touch each other, resume in the middle of a stacked
round, and a round's controls beside its ticket under their own round's mask."""
import math

import pytest
import torch

from llmprune.tickets.scratch.lth_options import LTHOptions
from llmprune.tickets.scratch.stacked import StackedNet, stackable
from llmprune.tickets.scratch.vision_data import load_data
from llmprune.tickets.scratch.vision_domain import VisionDomain, run_lth
from llmprune.tickets.scratch.vision_models import build_model, prunable_weights
from llmprune.tickets.ticket_masks import load_masks

from lth_helpers import tiny_idx_folder, tiny_settings
from test_lth_run import Recorder, SimulatedKill


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_idx_folder(tmp_path_factory.mktemp("lth-stacked") / "idx")


def small_domain(folder, iterations=30, eval_every=5, hidden=(12, 8), architecture="mlp"):
    data = load_data(str(folder), seed=0, validation_size=40)
    return VisionDomain(data, lambda s: build_model(architecture, data.input_shape, data.classes, list(hidden), s),
                        iterations=iterations, lr=5e-3, batch_size=20, eval_every=eval_every, progress=False,
                        device="cpu")


def random_masks(model, seed, keep=0.6):
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) < keep for n, p in prunable_weights(model).items()}


def test_stacked_forward_and_adam_are_k_separate_ones(folder):
    domain = small_domain(folder, architecture="conv2", hidden=())
    models = [domain.new_model(seed) for seed in (0, 1, 2)]
    assert all(stackable(m) for m in models)
    net = StackedNet(models)
    x = torch.randn(3, 5, 1, 8, 8)
    separate = torch.stack([m(x[k]) for k, m in enumerate(models)])
    torch.testing.assert_close(net.forward(x), separate, rtol=1e-5, atol=1e-6)
    shared = torch.randn(7, 1, 8, 8)
    torch.testing.assert_close(net.forward(shared, shared=True), torch.stack([m(shared) for m in models]),
                               rtol=1e-5, atol=1e-6)
    # one Adam over [K, ...] tensors is K Adams: each of its operations is elementwise. Not bit for bit on
    # every input: the fused CPU kernel rounded differently for 12 stacked elements than for 4 on some draws
    # (likely its vector path against its scalar tail; seen twice in full-suite runs, whose global random
    # state varies with test order); a job sharing moments with another is off by far more than this.
    stacked = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    alone = [stacked[k].detach().clone().requires_grad_(True) for k in range(3)]
    optimisers = [torch.optim.Adam([p], lr=1e-2, fused=True) for p in alone]
    together = torch.optim.Adam([stacked], lr=1e-2, fused=True)
    for step in range(4):
        gradient = torch.randn(3, 4, generator=torch.Generator().manual_seed(step))
        stacked.grad = gradient.clone()
        together.step()
        for k in range(3):
            alone[k].grad = gradient[k].clone()
            optimisers[k].step()
    for k in range(3):
        torch.testing.assert_close(stacked[k], alone[k], rtol=1e-6, atol=1e-7)


def test_stacked_jobs_equal_the_same_jobs_one_model_at_a_time(folder, tmp_path):
    settings = dict(trials=2, controls="reinit")
    single = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "single", parallel_jobs=1, **settings)))
    stacked = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "stacked", **settings)))
    for seed in (0, 1):
        for kind, r in [("ticket", 0), ("ticket", 1), ("ticket", 2), ("reinit", 1), ("reinit", 2)]:
            a = load_masks(tmp_path / "single" / f"seed-{seed}" / f"{kind}-r{r}" / "mask.pt")
            b = load_masks(tmp_path / "stacked" / f"seed-{seed}" / f"{kind}-r{r}" / "mask.pt")
            assert all(torch.equal(a[n], b[n]) for n in a), (seed, kind, r)
    for row_single, row_stacked in zip(single["rounds"], stacked["rounds"]):
        for arm, entry in row_single["arms"].items():
            other = row_stacked["arms"][arm]
            assert entry["early_stop_iteration"]["per_trial"] == other["early_stop_iteration"]["per_trial"]
            for key in ("test_accuracy", "final_test_accuracy"):
                for x, y in zip(entry[key]["per_trial"], other[key]["per_trial"]):
                    assert abs(x - y) <= 0.001, (arm, key)  # within 0.1 point
    assert stacked["rounds"][2]["remaining"] == single["rounds"][2]["remaining"]


def test_pruned_weights_never_regrow_in_a_stacked_job(folder, monkeypatch):
    domain = small_domain(folder, iterations=12, eval_every=1)
    models = [domain.new_model(seed) for seed in (0, 1, 2)]
    masks = [random_masks(models[0], 5), None, random_masks(models[0], 6, keep=0.3)]
    seen = []
    real = VisionDomain.evaluate_many

    def checking(self, net):  # called after every step here (eval_every 1)
        for job, job_masks in enumerate(masks):
            for name, mask in (job_masks or {}).items():
                assert torch.all(net.unstack(name, job)[~mask] == 0), (job, name)
        seen.append(1)
        return real(self, net)

    monkeypatch.setattr(VisionDomain, "evaluate_many", checking)
    domain.train_many(models, masks, [0, 1, 2], ["a", "b", "c"])
    assert len(seen) == 12
    for model, job_masks in zip(models, masks):  # and the weights written back keep them
        params = prunable_weights(model)
        for name, mask in (job_masks or {}).items():
            assert torch.all(params[name][~mask] == 0) and torch.all(params[name][mask] != 0)


def test_a_diverging_job_leaves_the_others_alone(folder):
    domain = small_domain(folder)

    def train(middle_nan: bool):
        models = [domain.new_model(seed) for seed in (0, 1, 2)]
        if middle_nan:
            with torch.no_grad():
                prunable_weights(models[1])["1.weight"].fill_(float("nan"))
        masks = [None, None, random_masks(models[2], 3)]
        return domain.train_many(models, masks, [0, 1, 2], ["a", "b", "c"]), models

    clean, clean_models = train(False)
    broken, broken_models = train(True)
    assert all(math.isnan(v) for v in broken[1]["curve"]["validation_loss"])
    for job in (0, 2):  # bit for bit what they were beside a healthy job
        assert broken[job]["curve"] == clean[job]["curve"]
        assert all(torch.equal(a, b) for a, b in zip(clean_models[job].parameters(), broken_models[job].parameters()))
    # and each job stops early where it would alone, whatever its neighbours did
    for job, seed in ((0, 0), (2, 2)):
        model = domain.new_model(seed)
        alone = domain.train_many([model], [None if job == 0 else random_masks(model, 3)], [seed], ["alone"])[0]
        assert alone["early_stop_iteration"] == clean[job]["early_stop_iteration"]
        assert abs(alone["test_accuracy"] - clean[job]["test_accuracy"]) <= 0.001
    assert len({r["early_stop_iteration"] for r in clean}) > 1 or len({r["test_accuracy"] for r in clean}) > 1


def test_resume_after_a_kill_in_a_stacked_round_gives_the_same_report(folder, tmp_path, monkeypatch):
    settings = dict(controls="reinit", trials=2)
    clean = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "clean", **settings)))
    Recorder(monkeypatch, fail_on_call=2)  # round 0 (two dense tickets) done, killed in round 1
    with pytest.raises(SimulatedKill):
        run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "killed", **settings)))
    assert sorted(p.parent.name for p in (tmp_path / "killed").glob("seed-*/*/metrics.json")) == ["ticket-r0"] * 2
    again = Recorder(monkeypatch)
    resumed = run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "killed", **settings)))
    assert again.batches == 2 and len(again.calls) == 2 * 4  # rounds 1 and 2: ticket + reinit of both trials
    for key in ("rounds", "matching", "trials", "arms"):
        assert resumed[key] == clean[key], key


def test_a_control_beside_a_ticket_uses_its_own_rounds_mask(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run", controls="reinit,random-mask", trials=2)))
    calls = {(c["desc"], c["seed"]): c for c in recorder.calls}
    batches = {}
    for call in recorder.calls:
        batches.setdefault(call["batch"], []).append((call["desc"], call["seed"]))
    # three stacked calls: the dense tickets, then each round's tickets with that round's controls
    assert sorted(len(b) for b in batches.values()) == [2, 6, 6]
    for r in (1, 2):
        together = next(b for b in batches.values() if ("ticket r%d" % r, 0) in b)
        assert ("reinit r%d" % r, 0) in together and ("random-mask r%d" % r, 1) in together
        for seed in (0, 1):
            derived = load_masks(tmp_path / "run" / f"seed-{seed}" / f"ticket-r{r - 1}" / "next_mask.pt")
            ticket, reinit = calls[(f"ticket r{r}", seed)], calls[(f"reinit r{r}", seed)]
            random_mask = calls[(f"random-mask r{r}", seed)]
            for name, mask in derived.items():
                assert torch.equal(reinit["masks"][name], mask) and torch.equal(ticket["masks"][name], mask)
                assert int(random_mask["masks"][name].sum()) == int(mask.sum())
            if r == 1:  # not the next round's (smaller) mask
                deeper = load_masks(tmp_path / "run" / f"seed-{seed}" / "ticket-r1" / "next_mask.pt")
                assert sum(int(m.sum()) for m in reinit["masks"].values()) > sum(int(m.sum()) for m in deeper.values())


def test_parallel_jobs_cuts_a_round_into_fixed_chunks(folder, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_lth(LTHOptions(**tiny_settings(folder, tmp_path / "run", controls="reinit", trials=3, rounds=1,
                                      parallel_jobs=4)))
    sizes = {}
    for call in recorder.calls:
        sizes[call["batch"]] = sizes.get(call["batch"], 0) + 1
    assert list(sizes.values()) == [3, 4, 2]  # round 0: 3 tickets; round 1: 6 jobs as 4 + 2
