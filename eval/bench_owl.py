"""OWL against uniform sparsity on the bundled SmolLM2 at 70% (issue 6 targets).

    python eval/bench_owl.py [--sparsity 0.7] [--nsamples 32] [--seqlen 512] [--eval-windows 64]

Prunes the same dense model four ways (Wanda, OWL+Wanda, SparseGPT, OWL+SparseGPT) with the
same calibration windows and measures bundled-Wikipedia test perplexity (512-token windows).
Targets: OWL+Wanda <= 0.7 x Wanda; OWL+SparseGPT < SparseGPT. Writes eval/results/owl.{md,json}.
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
from llmprune.calibration import calibration_batch  # noqa: E402
from llmprune.evaluate.perplexity import perplexity  # noqa: E402
from llmprune.io.loading import load_causal_lm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=64, help="perplexity windows (default 64; 0 = all)")
    parser.add_argument("--owl-m", type=float, default=5.0)
    parser.add_argument("--owl-lambda", type=float, default=0.08)
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--grid", default="", help="also OWL+Wanda at these M:lambda pairs, e.g. 3:0.08,7:0.15; "
                        "each is scored on validation windows (the first --val-windows of the train split) and the test split")
    parser.add_argument("--val-windows", type=int, default=16)
    parser.add_argument("--output", default=str(RESULTS / "owl"))
    args = parser.parse_args()
    command = "python eval/bench_owl.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    windows = args.eval_windows or None

    model, tokenizer, _ = load_causal_lm(args.model, dtype="float32", device="cpu")
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    calibration = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0)
    rows = []
    started = time.perf_counter()
    dense_ppl = perplexity(model, tokenizer, max_windows=windows, progress=False).ppl
    rows.append({"run": "dense", "method": None, "owl": False, "ppl": dense_ppl})
    print(f"dense: ppl {dense_ppl:.2f}", flush=True)
    for method in args.methods.split(","):
        for owl in (False, True):
            model.load_state_dict(dense)
            report = llmprune.prune(
                model, tokenizer, method=method, sparsity=args.sparsity, calibration_ids=calibration,
                owl=owl, owl_m=args.owl_m, owl_lambda=args.owl_lambda, device="cpu", progress=False,
            )
            ppl = perplexity(model, tokenizer, max_windows=windows, progress=False).ppl
            row = {
                "run": ("OWL+" if owl else "") + method, "method": method, "owl": owl, "ppl": ppl,
                "total_sparsity": report["total_sparsity"], "prune_seconds": report["prune_seconds"],
            }
            if owl:
                row["block_sparsity"] = report["owl"]["block_sparsity"]
                row["outlier_ratios"] = report["owl"]["outlier_ratios"]
            rows.append(row)
            print(f"{row['run']}: ppl {ppl:.2f}, sparsity {report['total_sparsity']:.4f}, {report['prune_seconds']:.0f} s", flush=True)

    for pair in filter(None, args.grid.split(",")):
        m_value, lam_value = (float(v) for v in pair.split(":"))
        model.load_state_dict(dense)
        report = llmprune.prune(
            model, tokenizer, method="wanda", sparsity=args.sparsity, calibration_ids=calibration,
            owl=True, owl_m=m_value, owl_lambda=lam_value, device="cpu", progress=False,
        )
        val = perplexity(model, tokenizer, split="train", max_windows=args.val_windows, progress=False).ppl
        ppl = perplexity(model, tokenizer, max_windows=windows, progress=False).ppl
        rows.append({"run": f"grid OWL+wanda M={m_value:g} lambda={lam_value:g}", "method": "wanda", "owl": True, "ppl": ppl,
                     "val_ppl": val, "m": m_value, "lambda": lam_value, "total_sparsity": report["total_sparsity"],
                     "prune_seconds": report["prune_seconds"], "block_sparsity": report["owl"]["block_sparsity"]})
        print(f"grid M={m_value:g} lambda={lam_value:g}: val ppl {val:.2f}, test ppl {ppl:.2f}", flush=True)

    by_run = {row["run"]: row["ppl"] for row in rows}
    checks = {}
    if "wanda" in by_run and "OWL+wanda" in by_run:
        ratio = by_run["OWL+wanda"] / by_run["wanda"]
        checks["owl_wanda_ratio"] = {"value": ratio, "target": "<= 0.7", "met": ratio <= 0.7}
    if "sparsegpt" in by_run and "OWL+sparsegpt" in by_run:
        ratio = by_run["OWL+sparsegpt"] / by_run["sparsegpt"]
        checks["owl_sparsegpt_ratio"] = {"value": ratio, "target": "< 1", "met": ratio < 1}
    grid_rows = [row for row in rows if row["run"].startswith("grid")]
    if grid_rows and "wanda" in by_run:
        chosen = min(grid_rows, key=lambda row: row["val_ppl"])  # chosen on validation windows, never on test
        ratio = chosen["ppl"] / by_run["wanda"]
        checks["owl_wanda_ratio_validation_chosen"] = {
            "value": ratio, "target": "<= 0.7", "met": ratio <= 0.7, "m": chosen["m"], "lambda": chosen["lambda"],
        }
    result = {
        "command": command,
        "settings": {**vars(args), "calibration": "wikipedia train", "eval": "wikipedia test, 512-token windows",
                     "torch_threads": torch.get_num_threads()},
        "rows": rows, "checks": checks, "seconds": round(time.perf_counter() - started, 1),
        "versions": llmprune.process.versions(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# OWL vs uniform sparsity, bundled SmolLM2-135M", "", f"Command: `{command}`", "",
        f"{args.sparsity:.0%} unstructured, calibration {args.nsamples} x {args.seqlen} tokens (Wikipedia train, seed 0), "
        f"perplexity on the bundled Wikipedia test split, 512-token windows ({windows or 'all'} windows), float32, CPU. "
        f"OWL M = {args.owl_m}, lambda = {args.owl_lambda}.", "",
        "| run | test perplexity | validation perplexity | sparsity over pruned layers | prune s |", "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        sparsity = f"{row['total_sparsity']:.4f}" if "total_sparsity" in row else "-"
        seconds = f"{row['prune_seconds']:.0f}" if "prune_seconds" in row else "-"
        val = f"{row['val_ppl']:.2f}" if "val_ppl" in row else "-"
        lines.append(f"| {row['run']} | {row['ppl']:.2f} | {val} | {sparsity} | {seconds} |")
    lines += ["", "| check | value | target | met |", "|---|---:|---|---|"]
    for name, check in checks.items():
        lines.append(f"| {name} | {check['value']:.3f} | {check['target']} | {'yes' if check['met'] else 'NO'} |")
    for row in rows:
        if row.get("block_sparsity"):
            spread = ", ".join(f"{s:.3f}" for s in row["block_sparsity"])
            lines += ["", f"OWL block sparsities ({row['run']}): {spread}"]
            break
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
