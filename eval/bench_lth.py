"""The cost of a LeNet-300-100 training iteration in `llmprune lth`: one model at a time against a plain
PyTorch loop, and independent jobs trained as one stacked model (``--parallel-jobs``).

    python eval/bench_lth.py [--iterations 200] [--repeats 10] [--threads 1] [--equivalence-iterations 2000]

Every loop trains LeNet-300-100 with Adam (lr 1.2e-3, batch 60) on Fashion-MNIST tensors already in
memory, in the same process, in ``--repeats`` interleaved blocks of ``--iterations`` iterations, so
that load from other users of a shared machine falls on all alike; the figures are medians over the
blocks of CPU time (and wall time). The plain loop: index a batch, forward, cross-entropy,
zero_grad, backward, step. One model: ``VisionDomain.train`` with a round-1 mask (re-applied after
every step) and evaluation only at the last iteration, whose cost is measured apart and subtracted
(target <= 1.2x plain). Stacked: ``VisionDomain.train_many`` with K = 6 jobs (3 trials x a ticket
and its control, as a round of the target run trains), per job (target <= 0.25x one model). Also
measured: both with the paper protocol's validation + test every 100 iterations (and K = 3, the
dense round), and from them the time of the full target run (paper preset, 15 rounds, ticket +
reinit, 3 trials). Then equivalence on LeNet: one job trained alone (one model) and the same job
as one of 6 stacked, for ``--equivalence-iterations``: early-stop iteration, test accuracies, the
next round's mask and the largest weight difference. Writes eval/results/lth_bench.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmprune.tickets.pruning_rules import LayerwiseRule  # noqa: E402
from llmprune.tickets.scratch.vision_data import load_data  # noqa: E402
from llmprune.tickets.scratch.vision_domain import VisionDomain  # noqa: E402
from llmprune.tickets.scratch.vision_models import lenet_300_100, initialise, prunable_weights  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plain_loop(model, x, y, iterations: int, seed: int) -> None:
    """The textbook loop."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(iterations):
        if position + 60 > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        batch = order[position:position + 60]
        position += 60
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def timed(work) -> tuple[float, float]:
    """(wall, CPU) seconds of ``work()``; with one thread CPU time is what the loop itself used,
    which other processes on a shared machine inflate far less than wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


STACK = 6  # 3 trials x (a round's ticket + its re-initialised control)
TRIALS_SEEDS = [0, 0, 1, 1, 2, 2]


def equivalence(data, rule, iterations: int) -> dict:
    """One job alone (the one-model path) and the same job as job 0 of 6 stacked ones."""
    domain = VisionDomain(data, lambda s: initialise(lenet_300_100(), s), iterations, 1.2e-3, 60, eval_every=100,
                          progress=False)
    masks = rule.masks(prunable_weights(domain.new_model(0)), 1)
    alone = domain.new_model(0)
    single = domain.train(alone, masks, 0, None, "alone")
    models = [domain.new_model(seed) for seed in TRIALS_SEEDS]
    stacked = domain.train_many(models, [masks] * STACK, TRIALS_SEEDS, ["stacked"] * STACK)[0]
    a, b = prunable_weights(alone), prunable_weights(models[0])
    next_a, next_b = rule.masks(a, 2, masks), rule.masks(b, 2, masks)
    differing = sum(int((next_a[k] != next_b[k]).sum()) for k in next_a)
    return {
        "iterations": iterations,
        "early_stop_iteration": [single["early_stop_iteration"], stacked["early_stop_iteration"]],
        "test_accuracy": [single["test_accuracy"], stacked["test_accuracy"]],
        "final_test_accuracy": [single["final_test_accuracy"], stacked["final_test_accuracy"]],
        "max_validation_loss_difference": max(abs(x - y) for x, y in zip(single["curve"]["validation_loss"],
                                                                         stacked["curve"]["validation_loss"])),
        "max_weight_difference": max(float((a[k] - b[k]).detach().abs().max()) for k in a),
        "max_weight": max(float(a[k].detach().abs().max()) for k in a),
        "next_mask_positions_differing": differing,
        "next_mask_positions": sum(m.numel() for m in next_a.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="iterations per block")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved blocks of each loop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--equivalence-iterations", type=int, default=2000,
                        help="iterations of the alone-vs-stacked comparison (0: skip it)")
    parser.add_argument("--output", default=str(RESULTS / "lth_bench"))
    args = parser.parse_args()
    command = "python eval/bench_lth.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", 0)
    x, y, n = data.train.x, data.train.y, args.iterations

    def lenet(seed: int):
        return initialise(lenet_300_100(), seed)

    domain = VisionDomain(data, lenet, n, 1.2e-3, 60, eval_every=n, progress=False)
    paper = VisionDomain(data, lenet, n, 1.2e-3, 60, eval_every=100, progress=False)
    params = prunable_weights(domain.new_model(0))
    rule = LayerwiseRule({k: p.numel() for k, p in params.items()},
                         {k: (0.1 if i == len(params) - 1 else 0.2) for i, k in enumerate(params)}, 2)
    masks = rule.masks(params, 1)

    def stacked(on: VisionDomain, jobs: int, block: int) -> list:
        models = [on.new_model(block + seed) for seed in TRIALS_SEEDS[:jobs]]
        return lambda: on.train_many(models, [masks] * jobs, [block + s for s in TRIALS_SEEDS[:jobs]],
                                     ["bench"] * jobs)

    def stacked_evaluation(jobs: int):
        from llmprune.tickets.scratch.stacked import StackedNet
        net = StackedNet([domain.new_model(seed) for seed in range(jobs)])
        return lambda: domain.evaluate_many(net)

    # warm-up: first calls pay for allocations and lazy initialisation
    plain_loop(lenet(0), x, y, 20, 0)
    warm = domain.new_model(0)
    domain.evaluate(warm)
    domain.train(warm, masks, 0, None, "warm-up")
    stacked(domain, STACK, 0)()
    names = ("plain", "ours", "paper", "stacked", "stacked_paper", "stacked3_paper")
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in names + ("evaluation", "stacked_evaluation")}
    for block in range(args.repeats):
        model = lenet(block)
        runs["plain"].append(timed(lambda: plain_loop(model, x, y, n, block)))
        model = domain.new_model(block)
        runs["evaluation"].append(timed(lambda: domain.evaluate(model)))
        wall, cpu = timed(lambda: domain.train(model, masks, block, None, "bench"))
        # ours evaluates once, at the last iteration: that evaluation is not a training step
        runs["ours"].append((wall - runs["evaluation"][-1][0], cpu - runs["evaluation"][-1][1]))
        model = paper.new_model(block)
        runs["paper"].append(timed(lambda: paper.train(model, masks, block, None, "bench")))
        runs["stacked_evaluation"].append(timed(stacked_evaluation(STACK)))
        wall, cpu = timed(stacked(domain, STACK, block))
        runs["stacked"].append((wall - runs["stacked_evaluation"][-1][0], cpu - runs["stacked_evaluation"][-1][1]))
        runs["stacked_paper"].append(timed(stacked(paper, STACK, block)))
        runs["stacked3_paper"].append(timed(stacked(paper, 3, block)))
        print(f"block {block}: " + ", ".join(f"{k} {1e3 * runs[k][-1][1] / n:.3f} ms CPU ({1e3 * runs[k][-1][0] / n:.3f} wall)"
                                              for k in names), flush=True)

    def per_iteration_ms(name: str, clock: int) -> float:
        return 1e3 * statistics.median(r[clock] for r in runs[name]) / n

    figures = {clock_name: {name: per_iteration_ms(name, clock) for name in names}
               for clock, clock_name in ((1, "cpu"), (0, "wall"))}
    for clock in figures.values():  # a stacked iteration trains every job: per job
        for name, jobs in (("stacked", STACK), ("stacked_paper", STACK), ("stacked3_paper", 3)):
            clock[name + "_per_job"] = clock[name] / jobs
    ratios = {c: figures[c]["ours"] / figures[c]["plain"] for c in figures}
    stacked_ratio = {c: figures[c]["stacked_per_job"] / figures[c]["ours"] for c in figures}
    stacked_paper_ratio = {c: figures[c]["stacked_paper_per_job"] / figures[c]["paper"] for c in figures}
    block_ratios = [o[1] / p[1] for o, p in zip(runs["ours"], runs["plain"])]
    stacked_block_ratios = [s[1] / STACK / o[1] for s, o in zip(runs["stacked"], runs["ours"])]
    cpu = figures["cpu"]
    # one trial: 16 ticket rounds (dense + 15) and 15 re-initialised ones, 50,000 iterations each
    trial_minutes = (16 + 15) * 50_000 * cpu["paper"] / 1e3 / 60
    # stacked: round 0 trains 3 dense tickets together, rounds 1-15 each 3 tickets + 3 controls
    stacked_hours = 50_000 * (cpu["stacked3_paper"] + 15 * cpu["stacked_paper"]) / 1e3 / 3600
    equivalent = equivalence(data, rule, args.equivalence_iterations) if args.equivalence_iterations else None
    result = {"command": command, "iterations_per_block": n, "blocks": args.repeats, "threads": torch.get_num_threads(),
              "ms_per_iteration": figures, "ratio_cpu": ratios["cpu"], "ratio_wall": ratios["wall"],
              "stacked_per_job_vs_one_model": stacked_ratio, "stacked_paper_per_job_vs_one_model": stacked_paper_ratio,
              "block_ratios_cpu": block_ratios, "stacked_block_ratios_cpu": stacked_block_ratios,
              "trial_with_reinit_minutes_cpu": trial_minutes,
              "full_target_run_hours_cpu_one_thread": 3 * trial_minutes / 60,
              "full_target_run_hours_cpu_stacked": stacked_hours, "equivalence": equivalent, "raw_seconds": runs,
              "machine": f"{os.cpu_count()} CPU cores, shared with other agents while measured"}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    wall = figures["wall"]
    lines = [
        "# `llmprune lth`: cost of a LeNet-300-100 iteration\n",
        f"`{command}` (torch threads: {result['threads']}; {result['machine']}; medians of {args.repeats} "
        f"interleaved blocks of {n} iterations; CPU time of this process, and wall time in brackets, which the "
        f"other load inflates; per-block CPU ratios ours/plain from {min(block_ratios):.2f} to "
        f"{max(block_ratios):.2f}, stacked per job / one model from {min(stacked_block_ratios):.2f} to "
        f"{max(stacked_block_ratios):.2f})\n",
        "| loop | ms / iteration, CPU (wall) | vs |",
        "|---|---|---|",
        f"| plain PyTorch (Adam, batch 60, tensors in memory) | {cpu['plain']:.3f} ({wall['plain']:.3f}) | 1 |",
        f"| llmprune lth, one model (mask re-applied after every step) | {cpu['ours']:.3f} ({wall['ours']:.3f}) | "
        f"**{ratios['cpu']:.2f}x** plain ({ratios['wall']:.2f}x) |",
        f"| llmprune lth, {STACK} jobs stacked, per job | {cpu['stacked_per_job']:.3f} ({wall['stacked_per_job']:.3f}) | "
        f"**{stacked_ratio['cpu']:.2f}x** one model ({stacked_ratio['wall']:.2f}x) |",
        f"| paper protocol (+ validation 5,000 and test 10,000 every 100 iterations), one model | {cpu['paper']:.3f} "
        f"({wall['paper']:.3f}) | {cpu['paper'] / cpu['plain']:.2f}x plain |",
        f"| paper protocol, {STACK} jobs stacked, per job | {cpu['stacked_paper_per_job']:.3f} "
        f"({wall['stacked_paper_per_job']:.3f}) | **{stacked_paper_ratio['cpu']:.2f}x** one model "
        f"({stacked_paper_ratio['wall']:.2f}x) |",
        f"| paper protocol, 3 jobs stacked (the dense round), per job | {cpu['stacked3_paper_per_job']:.3f} "
        f"({wall['stacked3_paper_per_job']:.3f}) | {cpu['stacked3_paper_per_job'] / cpu['paper']:.2f}x one model |",
        "",
        f"The full target run (3 trials, 16 ticket rounds and 15 re-initialised ones of 50,000 iterations, "
        f"paper protocol) at these CPU costs: one model at a time {3 * trial_minutes / 60:.1f} h of one core; "
        f"stacked (round 0: 3 jobs, rounds 1-15: 6 jobs) **{stacked_hours:.2f} h** of one core, "
        f"{60 * stacked_hours / 2:.0f} min on 2 cores if a second thread halved it (the bound; not measured "
        "here, where other sessions share the cores).",
    ]
    if equivalent:
        e = equivalent
        lines += ["", f"Equivalence, {e['iterations']} iterations under a round-1 mask, one job alone (one model) "
                  "vs the same job stacked with 5 others: early-stop iteration "
                  f"{e['early_stop_iteration'][0]} / {e['early_stop_iteration'][1]}, test accuracy at the early stop "
                  f"{100 * e['test_accuracy'][0]:.2f} / {100 * e['test_accuracy'][1]:.2f}%, at the end "
                  f"{100 * e['final_test_accuracy'][0]:.2f} / {100 * e['final_test_accuracy'][1]:.2f}%; largest "
                  f"weight difference {e['max_weight_difference']:.2e} (largest weight {e['max_weight']:.2f}), "
                  f"validation loss {e['max_validation_loss_difference']:.2e}; next round's mask: "
                  f"{e['next_mask_positions_differing']} of {e['next_mask_positions']} positions differ."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
