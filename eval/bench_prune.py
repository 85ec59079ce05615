"""Speed, memory and quality of one-shot pruning on the bundled SmolLM2-135M (issue 2 targets).

Each method runs in its own process so peak resident memory is its own. The yardstick is a
plain batched forward pass of the same calibration batch (nsamples x seqlen windows of the
Wikipedia train split) through the model in the same process, right after pruning (a pruned
model stored densely costs the same FLOPs as the dense one, and its logits then do not count
in the pruning peak). Prune time (calibration to pruned weights, model load excluded) is
reported as a ratio to it.

    .venv/bin/python eval/bench_prune.py                       # 32 x 512, full Wikipedia test split
    .venv/bin/python eval/bench_prune.py --eval-windows 40     # quicker perplexity
Writes eval/results/prune_bench.md and .json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TARGETS = {"wanda": 1.5, "sparsegpt": 2.5}  # max prune time / forward time
PEER_PPL = {"wanda": 46.6, "sparsegpt": 36.9}  # a widely used library, same setting (shared/ASSETS.md)


def worker(args: argparse.Namespace) -> dict:
    import torch

    import llmprune
    from llmprune.calibration import calibration_batch
    from llmprune.process import peak_rss_mb
    from llmprune.evaluate.perplexity import perplexity

    model, tokenizer = llmprune.load_model("llama", dtype="float32")
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    ids = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0)
    row = {"method": args.worker, "model_mb": round(model_mb, 1)}
    if args.worker != "dense":
        report = llmprune.prune(model, tokenizer, method=args.worker, sparsity=0.5, calibration_ids=ids, progress=False)
        row.update(prune_seconds=report["prune_seconds"], total_sparsity=round(report["total_sparsity"], 4),
                   peak_rss_mb=round(peak_rss_mb(), 1))
    # The yardstick runs after pruning so its logits do not count in the pruning peak; a
    # pruned model stored densely costs the same FLOPs as the dense one.
    with torch.no_grad():
        started = time.perf_counter()
        for batch in ids.split(args.forward_batch):
            model(batch)
        forward_s = time.perf_counter() - started
    row["forward_seconds"] = round(forward_s, 2)
    if "prune_seconds" in row:
        row["ratio"] = round(row["prune_seconds"] / forward_s, 2)
    result = perplexity(model, tokenizer, max_windows=args.eval_windows, progress=False)
    row.update(ppl=round(result.ppl, 2), eval_windows=result.windows)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--forward-batch", type=int, default=4, help="windows per batch of the reference forward pass")
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt")
    parser.add_argument("--name", default="prune_bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--worker", method, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                   "--forward-batch", str(args.forward_batch)]
        if args.eval_windows:
            command += ["--eval-windows", str(args.eval_windows)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    command = "python eval/bench_prune.py " + " ".join(sys.argv[1:])
    lines = [
        "# Pruning speed, memory and perplexity on SmolLM2-135M (CPU, float32)\n",
        f"Command: `{command}`  ",
        f"Calibration: {args.nsamples} x {args.seqlen} tokens of the bundled Wikipedia train split, seed 0; "
        f"perplexity on the Wikipedia test split, 512-token windows ({rows[0]['eval_windows']} windows).\n",
        "| method | sparsity | ppl | forward s | prune s | prune / forward | target | peak RSS while pruning MiB | model MiB + 1024 | peer ppl |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        method = row["method"]
        lines.append(
            f"| {method} | {row.get('total_sparsity', 0):.2%} | {row['ppl']:.2f} | {row['forward_seconds']:.1f} | "
            f"{row.get('prune_seconds', '-')} | {row.get('ratio', '-')} | {TARGETS.get(method, '-')} | "
            f"{row.get('peak_rss_mb', '-')} | {row['model_mb'] + 1024:.0f} | {PEER_PPL.get(method, '-')} |"
        )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
