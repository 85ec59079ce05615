"""ADMM against SparseGPT on the bundled SmolLM2 (issue 12): perplexity and prune seconds, same process.

    python eval/bench_admm.py [--targets 0.7,2:4,0.5] [--nsamples 16] [--seqlen 256] [--eval-windows 16]

Each target prunes the same dense model with SparseGPT and with ADMM through ``llmprune.prune``
(the same calibration windows: bundled Wikipedia train, seed 0) and measures bundled-Wikipedia test
perplexity on the first ``--eval-windows`` 512-token windows. Results are rewritten after every run,
so an interrupted benchmark keeps what it finished. Writes eval/results/admm.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmprune  # noqa: E402
from llmprune.evaluate.perplexity import perplexity  # noqa: E402
from llmprune.process import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def target_options(text: str) -> dict:
    return {"pattern": text} if ":" in text else {"sparsity": float(text)}


def write_results(out: Path, command: str, args, rows: list[dict], started: float) -> None:
    result = {
        "command": command,
        "settings": {**vars(args), "calibration": "wikipedia train, seed 0", "eval": "wikipedia test, 512-token windows",
                     "torch_threads": torch.get_num_threads(), "machine": "2 CPU cores shared with four other agents"},
        "rows": rows, "seconds": round(time.perf_counter() - started, 1), "versions": versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# ADMM vs SparseGPT, bundled SmolLM2-135M", "", f"Command: `{command}`", "",
        f"Calibration {args.nsamples} x {args.seqlen} tokens (bundled Wikipedia train, seed 0); perplexity on the first "
        f"{args.eval_windows} 512-token windows of the bundled Wikipedia test split; float32, CPU, "
        f"{torch.get_num_threads()} torch threads. Measured on a machine of 2 CPU cores shared with four other agents, "
        "so the seconds are noisy and only comparable within one run.", "",
        "| target | method | test perplexity | sparsity over pruned layers | prune s |", "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        sparsity = f"{row['total_sparsity']:.4f}" if "total_sparsity" in row else "-"
        seconds = f"{row['prune_seconds']:.0f}" if "prune_seconds" in row else "-"
        lines.append(f"| {row['target']} | {row['method'] or 'dense'} | {row['ppl']:.2f} | {sparsity} | {seconds} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama")
    parser.add_argument("--targets", default="0.7,2:4,0.5", help="comma-separated sparsities or N:M patterns")
    parser.add_argument("--methods", default="sparsegpt,admm")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--output", default=str(RESULTS / "admm"))
    args = parser.parse_args()
    command = "python eval/bench_admm.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = Path(args.output)
    started = time.perf_counter()

    model, tokenizer = llmprune.load_model(args.model)
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rows = [{"target": "-", "method": None,
             "ppl": perplexity(model, tokenizer, max_windows=args.eval_windows, progress=False).ppl}]
    print(f"dense: ppl {rows[0]['ppl']:.2f}", flush=True)
    for target in args.targets.split(","):
        for method in args.methods.split(","):
            model.load_state_dict(dense)
            report = llmprune.prune(model, tokenizer, method=method, nsamples=args.nsamples, seqlen=args.seqlen,
                                    progress=False, **target_options(target))
            ppl = perplexity(model, tokenizer, max_windows=args.eval_windows, progress=False).ppl
            rows.append({"target": target, "method": method, "ppl": ppl, "total_sparsity": report["total_sparsity"],
                         "prune_seconds": report["prune_seconds"]})
            print(f"{target} {method}: ppl {ppl:.2f}, sparsity {report['total_sparsity']:.4f}, "
                  f"{report['prune_seconds']:.0f} s", flush=True)
            write_results(out, command, args, rows, started)
    write_results(out, command, args, rows, started)
    print(out.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
