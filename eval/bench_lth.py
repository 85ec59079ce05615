"""The cost of one LeNet-300-100 training iteration in `llmprune lth` against a plain PyTorch loop.

    python eval/bench_lth.py [--iterations 200] [--repeats 15] [--threads 1]

Both loops train LeNet-300-100 with Adam (lr 1.2e-3, batch 60) on Fashion-MNIST tensors already in
memory, in the same process, in ``--repeats`` interleaved blocks of ``--iterations`` iterations, so
that load from other users of a shared machine falls on both alike; the figures are the fastest
block of each (the least disturbed) and the median of the per-block ratios. The plain loop: index a
batch, forward, cross-entropy, zero_grad, backward, step. Ours: ``VisionDomain.train`` with a
round-1 mask (re-applied after every step) and evaluation only at the last iteration, whose cost is
measured apart and subtracted. Target: ours <= 1.2x plain. Also
measured: an iteration of the paper protocol with validation + test every 100 iterations, and from it
the estimated time of the full target run (paper preset, 15 rounds, ticket + reinit, 3 trials).
Writes eval/results/lth_bench.{md,json}.
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

from llmprune.imp.lth import VisionDomain  # noqa: E402
from llmprune.imp.pruning import LayerwiseRule  # noqa: E402
from llmprune.imp.vision_data import load_data  # noqa: E402
from llmprune.imp.vision_models import lenet_300_100, initialise, prunable_weights  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plain_loop(model, x, y, iterations: int, seed: int) -> float:
    """Seconds per iteration of the textbook loop."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x), generator=generator), 0
    began = time.perf_counter()
    for _ in range(iterations):
        if position + 60 > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        batch = order[position:position + 60]
        position += 60
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - began) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="iterations per block")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved blocks of each loop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--output", default=str(RESULTS / "lth_bench"))
    args = parser.parse_args()
    command = "python eval/bench_lth.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", 0)
    x, y = data.train.x, data.train.y
    domain = VisionDomain(data, lambda s: initialise(lenet_300_100(), s), args.iterations, 1.2e-3, 60,
                          eval_every=args.iterations, progress=False)
    paper = VisionDomain(data, lambda s: initialise(lenet_300_100(), s), args.iterations, 1.2e-3, 60,
                         eval_every=100, progress=False)
    probe = domain.new_model(0)
    params = prunable_weights(probe)
    rule = LayerwiseRule({n: p.numel() for n, p in params.items()},
                         {n: (0.1 if i == len(params) - 1 else 0.2) for i, n in enumerate(params)}, 1)
    masks = rule.masks(params, 1)
    plain, ours, with_eval, evals = [], [], [], []
    for repeat in range(args.repeats):
        model = initialise(lenet_300_100(), repeat)
        plain.append(plain_loop(model, x, y, args.iterations, repeat))
        model = domain.new_model(repeat)
        began = time.perf_counter()
        domain.evaluate(model)
        evals.append(time.perf_counter() - began)
        began = time.perf_counter()
        domain.train(model, masks, repeat, None, "bench")
        ours.append((time.perf_counter() - began - evals[-1]) / args.iterations)
        model = paper.new_model(repeat)
        began = time.perf_counter()
        paper.train(model, masks, repeat, None, "bench")
        with_eval.append((time.perf_counter() - began) / args.iterations)
        print(f"block {repeat}: plain {1e3 * plain[-1]:.3f} ms, ours {1e3 * ours[-1]:.3f} ms, "
              f"with eval every 100 {1e3 * with_eval[-1]:.3f} ms, one evaluation {evals[-1]:.3f} s", flush=True)
    plain_ms, ours_ms, eval_ms = (1e3 * min(v) for v in (plain, ours, with_eval))
    median_ratio = statistics.median(o / p for o, p in zip(ours, plain))
    # the full target run: 3 trials x (16 ticket rounds + 15 reinit rounds) x 50,000 iterations
    jobs = 3 * (16 + 15)
    full_hours = jobs * 50_000 * eval_ms / 1e3 / 3600
    result = {"command": command, "iterations": args.iterations, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "plain_ms_per_iteration": plain_ms,
              "ours_ms_per_iteration": ours_ms, "ratio": ours_ms / plain_ms, "median_block_ratio": median_ratio,
              "paper_protocol_ms_per_iteration": eval_ms, "evaluation_seconds": statistics.median(evals),
              "trial_with_reinit_minutes": (16 + 15) * 50_000 * eval_ms / 1e3 / 60,
              "full_target_run_hours": full_hours, "raw": {"plain": plain, "ours": ours, "with_eval": with_eval},
              "machine": f"{os.cpu_count()} CPU cores, shared with other agents while measured"}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(
        "# `llmprune lth`: cost of a LeNet-300-100 iteration\n\n"
        f"`{command}` (torch threads: {result['threads']}; {result['machine']}; fastest of {args.repeats} "
        f"interleaved blocks of {args.iterations} iterations; median of the per-block ratios "
        f"{median_ratio:.2f}x)\n\n"
        "| loop | ms / iteration |\n|---|---|\n"
        f"| plain PyTorch (Adam, batch 60, tensors in memory) | {plain_ms:.3f} |\n"
        f"| llmprune lth training step (mask re-applied after every step) | {ours_ms:.3f} (**{ours_ms / plain_ms:.2f}x**) |\n"
        f"| paper protocol: + validation (5,000) and test (10,000) every 100 iterations | {eval_ms:.3f} |\n\n"
        f"One paper-preset LeNet trial with the re-initialisation control (16 + 15 rounds of 50,000 iterations): "
        f"about {result['trial_with_reinit_minutes']:.0f} min at this rate; the full target run (3 trials) about "
        f"{full_hours:.1f} h.\n", encoding="utf-8")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
