"""Block reconstruction on the bundled SmolLM2-135M (issue 12, item 1).

    python eval/bench_reconstruct.py sweep [--sweep-blocks 6] [--configs ...]
    python eval/bench_reconstruct.py main  [--runs sparsegpt:0.7,sparsegpt+r:0.7,...]

``sweep`` chooses the defaults: the model is cut to its first ``--sweep-blocks`` blocks (the sweep
must stay short on a shared 2-CPU machine), pruned with SparseGPT at ``--sweep-sparsity`` and each
reconstruction setting, and scored by the *held-out calibration loss*: the squared error of the last
block's output (after the final norm) to the dense model's, relative to the dense output's mean
square, on ``--val-windows`` train-split windows drawn with another seed than the calibration's.

``main`` prunes the whole model for each run (``method[+r]:sparsity-or-N-M``, ``dense:0``; ``+r`` adds
reconstruction with the defaults, or with ``--recon`` settings) and measures perplexity on the
first ``--eval-windows`` Wikipedia test windows (512 tokens), prune seconds and the peak memory
of the run (VmHWM, reset before each run) from the report, plus the perplexity on the validation
windows. Results are appended to eval/results/reconstruct.json and written as reconstruct.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmprune  # noqa: E402
from llmprune.calibration import calibration_batch  # noqa: E402
from llmprune.evaluate.perplexity import perplexity, perplexity_of_windows  # noqa: E402
from llmprune.process import return_freed_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SWEEP = (
    "none;"
    "target=teacher,parts=block;target=local,parts=block;target=teacher,parts=separate;target=local,parts=separate;"
    "lr=3e-5;lr=3e-4;norms=1"
)


def reset_peak_memory() -> None:
    """Start this process's VmHWM again from its current RSS (Linux: write 5 to clear_refs)."""
    return_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def parse_settings(text: str) -> dict:
    """'target=local,lr=3e-5' -> reconstruction keywords for llmprune.prune."""
    settings = {}
    for pair in filter(None, text.split(",")):
        key, value = pair.split("=")
        if key in ("steps", "batch_size"):
            settings["reconstruct_" + key] = int(value)
        elif key == "lr":
            settings["reconstruct_lr"] = float(value)
        elif key == "norms":
            settings["reconstruct_norms"] = value not in ("0", "false")
        else:
            settings["reconstruct_" + key] = value
    return settings


def load_model(blocks: int | None = None):
    model, tokenizer = llmprune.load_model("llama", dtype="float32", device="cpu")
    if blocks:
        model.model.layers = model.model.layers[:blocks]
        model.config.num_hidden_layers = blocks
    return model, tokenizer


@torch.no_grad()
def last_block_outputs(model, windows: torch.Tensor) -> torch.Tensor:
    """The final norm applied to the last block's output, for each window."""
    outputs = []
    for start in range(0, windows.shape[0], 4):
        hidden = model.model(input_ids=windows[start : start + 4], use_cache=False).last_hidden_state
        outputs.append(hidden)
    return torch.cat(outputs)


def sweep(args, calibration, validation, save) -> list[dict]:
    model, _ = load_model(args.sweep_blocks)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = last_block_outputs(model, validation).double()
    scale = float(dense.pow(2).mean())
    rows = []
    base = parse_settings(args.recon)
    for config in args.configs.split(";"):
        model.load_state_dict(dense_state)
        options = {} if config == "none" else {"reconstruct": True, **base, **parse_settings(config)}
        report = llmprune.prune(model, None, method="sparsegpt", sparsity=args.sweep_sparsity, calibration_ids=calibration,
                                device="cpu", progress=False, **options)
        error = float((last_block_outputs(model, validation).double() - dense).pow(2).mean()) / scale
        entry = report.get("reconstruct", {})
        row = {"config": config, "settings": {k.removeprefix("reconstruct_"): v for k, v in options.items()},
               "held_out_calibration_error": error, "prune_seconds": report["prune_seconds"],
               "mean_block_error_before": entry.get("mean_held_out_error_before"),
               "mean_block_error_after": entry.get("mean_held_out_error_after")}
        rows.append(row)
        save(rows)
        print(json.dumps(row), flush=True)
    return rows


def main_runs(args, calibration, validation, save) -> list[dict]:
    rows = []
    recon = parse_settings(args.recon)
    for run in args.runs.split(","):
        label, amount = run.split(":")
        method, _, plus = label.partition("+")
        target = {"pattern": amount} if ":" in amount or "-" in amount else {"sparsity": float(amount)}
        if "pattern" in target:
            target["pattern"] = amount.replace("-", ":")
        model, tokenizer = load_model()
        gc.collect()
        reset_peak_memory()
        options = {"reconstruct": True, **recon} if plus == "r" else {}
        report = {"prune_seconds": 0.0, "peak_rss_mb": 0.0, "total_sparsity": 0.0}  # "dense:0" is not pruned
        if method != "dense":
            report = llmprune.prune(model, tokenizer, method=method, calibration_ids=calibration, device="cpu",
                                    progress=args.progress, **target, **options)
        ppl = perplexity(model, tokenizer, max_windows=args.eval_windows, progress=False)
        val_nll, _ = perplexity_of_windows(model, validation, progress=False)
        entry = report.get("reconstruct")
        row = {
            "run": run, "method": method, "reconstruct": plus == "r", **target,
            "ppl": ppl.ppl, "eval_windows": ppl.windows, "val_ppl": math.exp(val_nll),
            "prune_seconds": report["prune_seconds"], "peak_rss_mb": report["peak_rss_mb"],
            "total_sparsity": report["total_sparsity"],
        }
        if entry:
            row["reconstruct_settings"] = {k: entry[k] for k in ("target", "parts", "steps", "lr", "batch_size", "norms")}
            row["mean_block_error_before"] = entry["mean_held_out_error_before"]
            row["mean_block_error_after"] = entry["mean_held_out_error_after"]
            row["reconstruct_seconds"] = entry["seconds"]
        rows.append(row)
        save(rows)
        print(json.dumps(row), flush=True)
        del model
    return rows


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def markdown(results: dict) -> str:
    """Every invocation's rows as tables, each under its command."""
    lines = ["# Block reconstruction on SmolLM2-135M (bundled, float32, CPU)", "",
             "Written by `eval/bench_reconstruct.py`. The machine was shared: 2 CPU cores with four other agents' jobs",
             "running (load average 10-15), so seconds are inflated and noisy; compare them only within one invocation.", ""]
    for invocation in results["invocations"]:
        lines += [f"## {invocation['mode']}: `{invocation['command']}`", "",
                  f"{invocation['nsamples']} x {invocation['seqlen']} calibration tokens, {invocation['val_windows']} held-out "
                  f"calibration windows (train split, seed 1)"
                  + (f", wall {invocation['wall_seconds']:.0f} s" if "wall_seconds" in invocation else "") + "."
                  + (f" {invocation['note']}." if invocation.get("note") else ""), ""]
        if invocation["mode"] == "sweep":
            lines += ["| setting | held-out calibration error | block error before -> after (mean) | prune s |", "|---|---|---|---|"]
            for row in invocation.get("rows", []):
                lines.append(f"| {row['config']} | {_number(row['held_out_calibration_error'])} | "
                             f"{_number(row['mean_block_error_before'])} -> {_number(row['mean_block_error_after'])} | "
                             f"{row['prune_seconds']:.0f} |")
        else:
            lines += [f"| run | test ppl ({invocation['eval_windows']} windows) | held-out calibration ppl | prune s | "
                      "peak RSS MiB | block error before -> after (mean) |", "|---|---|---|---|---|---|"]
            for row in invocation.get("rows", []):
                lines.append(f"| {row['run']} | {row['ppl']:.2f} | {row['val_ppl']:.2f} | {row['prune_seconds']:.0f} | "
                             f"{row['peak_rss_mb']:.0f} | {_number(row.get('mean_block_error_before'))} -> "
                             f"{_number(row.get('mean_block_error_after'))} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("sweep", "main"))
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--val-windows", type=int, default=8, help="held-out calibration windows (train split, seed 1)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--recon", default="", help="reconstruction settings for every run, e.g. steps=16,lr=1e-4")
    parser.add_argument("--sweep-blocks", type=int, default=6)
    parser.add_argument("--sweep-sparsity", type=float, default=0.7)
    parser.add_argument("--configs", default=DEFAULT_SWEEP, help="';'-separated settings, 'none' = no reconstruction")
    parser.add_argument("--runs", default="sparsegpt:0.7,sparsegpt+r:0.7,wanda+r:0.7")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "reconstruct.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python eval/bench_reconstruct.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _, tokenizer = llmprune.load_model("llama", dtype="float32", device="cpu")
    calibration = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0)
    validation = calibration_batch(tokenizer, "wikipedia", args.val_windows, args.seqlen, seed=1)
    started = time.perf_counter()
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {"invocations": []}
    invocation = {
        "command": command, "mode": args.mode, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "val_windows": args.val_windows, "eval_windows": args.eval_windows, "threads": args.threads,
        "machine": "2 CPU cores shared with four other agents' jobs (load average 10-15): times are inflated and noisy",
    }
    results["invocations"].append(invocation)

    def save(rows: list[dict]) -> None:  # after every run, so an interrupted benchmark keeps what it measured
        invocation.update(rows=rows, wall_seconds=round(time.perf_counter() - started, 1))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        output.with_suffix(".md").write_text(markdown(results))

    (sweep if args.mode == "sweep" else main_runs)(args, calibration, validation, save)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
