"""Results table: dense, magnitude, Wanda and SparseGPT at several sparsities and N:M patterns.

On the bundled SmolLM2-135M (or --model), with one fixed calibration batch (--nsamples x --seqlen
windows of the Wikipedia train split, seed --seed) shared by every method, each row is pruned in
its own worker process (so peak memory is per run) and evaluated the same way: perplexity on the
bundled Wikipedia test split and accuracy on the offline lm-eval tasks. When llmcompressor is
available (in this python, or in another one given with --peer-python, since llmcompressor 0.14
pins an older transformers) its Wanda and SparseGPT run on the same calibration windows and
their rows are added. Writes eval/results/<name>.md, .json and .png (perplexity against sparsity).

It also measures the cost of perplexity against a plain batched forward pass over the same
tokens (target: at most 1.2x) and prints the ratio.

    .venv/bin/python eval/bench_results_table.py                       # the full table (hours on 2 CPUs)
    .venv/bin/python eval/bench_results_table.py --methods dense,wanda --sparsities 0.5 --patterns 2:4 \
        --eval-windows 16 --task-limit 100 --name quick
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "peer_llmcompressor.py"
PEER_METHODS = ("wanda", "sparsegpt")
# A row's method is a recipe: a pruning method and "+"-joined modifiers, e.g. admm+reconstruct+auto.
ALLOCATION_MODIFIERS = ("owl", "ramp", "auto")
MODIFIERS = ("reconstruct", *ALLOCATION_MODIFIERS)
PEER_MODIFIERS = ("owl",)  # llmcompressor's Wanda and SparseGPT modifiers take sparsity_profile="owl"


def parse_recipe(recipe: str) -> tuple[str, dict]:
    """``admm+reconstruct+auto`` -> ("admm", {"reconstruct": True, "allocation": "auto"})."""
    method, *modifiers = recipe.split("+")
    overrides: dict = {}
    for modifier in modifiers:
        if modifier == "reconstruct":
            overrides["reconstruct"] = True
        elif modifier in ALLOCATION_MODIFIERS and "allocation" not in overrides:
            overrides["allocation"] = modifier
        else:
            raise SystemExit(f"unknown or repeated recipe modifier '{modifier}' in '{recipe}' (use {', '.join(MODIFIERS)})")
    return method, overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama", help="model spec as llmprune takes it (default: llama = SmolLM2-135M)")
    p.add_argument("--name", default="smollm2-135m", help="results file name under --out-dir")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt",
                   help="dense and recipes: a method with '+'-joined modifiers (reconstruct; owl, ramp or auto "
                        "allocation), e.g. admm+reconstruct+auto; llmcompressor runs wanda/sparsegpt[+owl]")
    p.add_argument("--sparsities", default="0.5,0.6,0.7", help="unstructured sparsities ('' for none)")
    p.add_argument("--patterns", default="2:4,4:8", help="N:M patterns ('' for none)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=None, help="perplexity windows (default: the whole test split)")
    p.add_argument("--tasks", default="rt_sentiment,wiki_topic", help="lm-eval tasks ('' for none)")
    p.add_argument("--task-limit", type=int, default=None, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="evaluation batch size")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    p.add_argument("--peer-python", help="python of a venv with llmcompressor (default: this one, if it has it)")
    p.add_argument("--no-peer", action="store_true", help="skip llmcompressor rows")
    p.add_argument("--libraries", default="llmprune,llmcompressor", help="which libraries' rows to run (dense always runs when in --methods)")
    p.add_argument("--resume", action="store_true", help="keep rows already in the results JSON with the same settings")
    p.add_argument("--merge", help="comma-separated results JSONs (same settings) whose rows join this table")
    p.add_argument("--note", action="append", help="a line to add under the table (e.g. what else ran on the machine); repeatable")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def split_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def plan_rows(args: argparse.Namespace, peer: bool) -> list[dict]:
    methods = split_list(args.methods)
    sparsities = [float(s) for s in split_list(args.sparsities)]
    patterns = split_list(args.patterns)
    rows = []
    if "dense" in methods:
        rows.append({"library": "-", "method": "dense", "sparsity": None, "pattern": None})
    wanted = split_list(getattr(args, "libraries", "llmprune,llmcompressor"))
    libraries = [("llmprune", [m for m in methods if m != "dense"])] if "llmprune" in wanted else []
    if peer and "llmcompressor" in wanted:
        libraries.append(("llmcompressor", [m for m in methods if peer_can_run(m)]))
    for library, names in libraries:
        for method in names:
            rows += [{"library": library, "method": method, "sparsity": s, "pattern": None} for s in sparsities]
            # Per-block allocations give blocks different sparsities, which an N:M pattern cannot.
            if not any(m in ALLOCATION_MODIFIERS for m in method.split("+")[1:]):
                rows += [{"library": library, "method": method, "sparsity": None, "pattern": p} for p in patterns]
    return rows


def peer_can_run(recipe: str) -> bool:
    method, *modifiers = recipe.split("+")
    return method in PEER_METHODS and all(m in PEER_MODIFIERS for m in modifiers)


def row_key(row: dict) -> str:
    return f"{row['library']}/{row['method']}/{row['pattern'] or row['sparsity']}"


# ----------------------------------------------------------------------------------------- worker


def _timed_min(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_costs(model, tokenizer, calibration, args) -> dict:
    """Seconds of a plain forward pass over the calibration batch, and perplexity vs plain forward."""
    import torch

    from llmprune.evaluate.perplexity import eval_windows, perplexity_of_windows

    def forward_all(windows):
        with torch.no_grad():
            for start in range(0, windows.shape[0], args.batch_size):
                model(input_ids=windows[start : start + args.batch_size]).logits  # noqa: B018

    windows = eval_windows(tokenizer, "wikipedia", "test", args.eval_seqlen, min(args.eval_windows or 8, 8))
    # Alternate the two and keep each one's best, so a neighbour's load burst hits both alike.
    plain, ppl = math.inf, math.inf
    for _ in range(2):
        plain = min(plain, _timed_min(lambda: forward_all(windows), 1))
        ppl = min(ppl, _timed_min(lambda: perplexity_of_windows(model, windows, args.batch_size, progress=False), 1))
    calib_forward = _timed_min(lambda: forward_all(calibration), 1)
    return {
        "ppl_cost": {"windows": int(windows.shape[0]), "tokens": int(windows.numel()), "plain_forward_s": plain,
                     "perplexity_s": ppl, "ratio": ppl / plain},
        "calibration_forward_s": calib_forward,
    }


def run_worker(spec_path: str) -> int:
    import torch
    from safetensors.torch import load_file

    import llmprune
    from llmprune.evaluate import evaluate
    from llmprune.io.loading import load_causal_lm

    spec = json.loads(Path(spec_path).read_text())
    row, args = spec["row"], argparse.Namespace(**spec["args"])
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_causal_lm(args.model, dtype="float32", device="cpu")
    calibration = torch.tensor(json.loads(Path(spec["calibration"]).read_text()))
    out: dict = {"row": row}
    if row["method"] == "dense":
        out["costs"] = measure_costs(model, tokenizer, calibration, args)
        out["report"] = {"total_sparsity": 0.0, "prune_seconds": None, "peak_rss_mb": llmprune.process.peak_rss_mb()}
    elif row["library"] == "llmprune":
        method, overrides = parse_recipe(row["method"])
        out["report"] = llmprune.prune(
            model, tokenizer, method=method, sparsity=row["sparsity"], pattern=row["pattern"],
            calibration_ids=calibration, seed=args.seed, progress=False, **overrides,
        )
        out["report"].pop("layers", None)
    else:  # llmcompressor pruned in the peer process; load its weights into our copy of the model
        weights = load_file(spec["peer_weights"])
        missing = set(weights) - set(model.state_dict())
        if missing:
            raise SystemExit(f"peer weights do not match the model: {sorted(missing)[:3]}")
        model.load_state_dict(weights, strict=False)
        out["report"] = json.loads(Path(spec["peer_report"]).read_text())
    started = time.perf_counter()
    out["eval"] = evaluate(
        model, tokenizer, ppl="wikipedia", tasks=args.tasks or None, seqlen=args.eval_seqlen,
        max_windows=args.eval_windows, batch_size=args.batch_size, limit=args.task_limit, progress=False,
    )
    out["eval_seconds"] = time.perf_counter() - started
    Path(spec["output"]).write_text(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------------------- driver


def find_peer(args) -> str | None:
    if args.no_peer:
        return None
    if args.peer_python:
        return args.peer_python
    return sys.executable if importlib.util.find_spec("llmcompressor") else None


def worker_env(args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_row(row: dict, args, work: Path, calibration: Path, peer: str | None) -> dict:
    tag = row_key(row).replace("/", "_").replace(":", "-")
    spec = {"row": row, "args": vars(args), "calibration": str(calibration), "output": str(work / f"{tag}.out.json")}
    if row["library"] == "llmcompressor":
        spec["peer_weights"], spec["peer_report"] = str(work / f"{tag}.safetensors"), str(work / f"{tag}.peer.json")
        from llmprune.io.loading import resolve_model_path

        command = [peer, str(PEER_SCRIPT), "--model-dir", resolve_model_path(args.model), "--method", row["method"].split("+")[0],
                   "--calibration", str(calibration), "--weights", spec["peer_weights"], "--report", spec["peer_report"]]
        command += ["--pattern", row["pattern"]] if row["pattern"] else ["--sparsity", str(row["sparsity"])]
        command += ["--owl"] if "owl" in row["method"].split("+")[1:] else []
        if args.threads:
            command += ["--threads", str(args.threads)]
        log = work / f"{tag}.peer.log"
        with open(log, "w") as handle:
            done = subprocess.run(command, env=worker_env(args), stdout=handle, stderr=subprocess.STDOUT, cwd=work)
        if done.returncode != 0:
            raise RuntimeError(f"llmcompressor failed for {row_key(row)}; see {log}:\n" + log.read_text()[-2000:])
    spec_path = work / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], env=worker_env(args))
    if done.returncode != 0:
        raise RuntimeError(f"worker failed for {row_key(row)} (exit {done.returncode})")
    return json.loads(Path(spec["output"]).read_text())


def settings_of(args) -> dict:
    keys = ("model", "nsamples", "seqlen", "seed", "eval_seqlen", "eval_windows", "tasks", "task_limit", "batch_size", "threads")
    return {k: getattr(args, k) for k in keys}


def same_rows_setting(a: dict, b: dict) -> bool:
    """Rows can share one table when pruned and scored alike; the tasks may differ (a missing task shows as -),
    and so may the thread count (it changes seconds, which are compared only within one run)."""
    loose = ("tasks", "threads")
    return {k: v for k, v in a.items() if k not in loose} == {k: v for k, v in b.items() if k not in loose}


def add_missing_tasks(row: dict, other: dict) -> None:
    """The dense row of another run scored on other tasks: its task scores join this one's. (A pruned row is
    not merged so: another run's pruning may differ, e.g. with another thread count.)"""
    tasks = row["eval"].setdefault("lm_eval", {}).setdefault("tasks", {})
    for task, scores in other["eval"].get("lm_eval", {}).get("tasks", {}).items():
        tasks.setdefault(task, scores)


def pattern_density(pattern: str) -> float:
    """The sparsity an N:M pattern gives: N zeros in every M weights."""
    n, m = (int(x) for x in pattern.split(":"))
    return n / m


def summary_row(result: dict) -> dict:
    row, report, ev = result["row"], result["report"], result["eval"]
    tasks = ev.get("lm_eval", {}).get("tasks", {})
    return {
        "produced_by": result.get("produced_by"),
        "threads": result.get("threads"),
        "library": row["library"],
        "method": row["method"],
        "pattern": row["pattern"] or ("-" if row["method"] == "dense" else "unstructured"),
        "sparsity": row["sparsity"] if row["sparsity"] is not None else (pattern_density(row["pattern"]) if row["pattern"] else 0.0),
        "total_sparsity": report.get("total_sparsity"),
        "wikipedia_ppl": ev["ppl"]["wikipedia"]["ppl"],
        **{f"{task}_acc": scores.get("acc") for task, scores in tasks.items()},
        "prune_seconds": report.get("prune_seconds"),
        "peak_rss_mb": report.get("peak_rss_mb"),
    }


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


METHOD_ORDER = {"dense": 0, "magnitude": 1, "wanda": 2, "sparsegpt": 3, "ria": 4, "admm": 5}
LIBRARY_ORDER = {"-": 0, "llmprune": 1, "llmcompressor": 2}


def table_order(row: dict) -> tuple:
    """Dense first; then by method, recipe modifiers, library, unstructured by sparsity before N:M patterns."""
    r = row["row"]
    method, _, modifiers = r["method"].partition("+")
    return (METHOD_ORDER.get(method, 9), modifiers, LIBRARY_ORDER.get(r["library"], 9), r["pattern"] is not None,
            r["sparsity"] or 0.0, r["pattern"] or "")


def task_columns(rows: list[dict], settings: dict) -> list[str]:
    """This run's tasks first, then any other task that a merged or kept row was scored on."""
    names = split_list(settings.get("tasks"))
    for r in rows:
        names += [key[: -len("_acc")] for key in r if key.endswith("_acc") and key[: -len("_acc")] not in names]
    return names


def sparsegpt_time_ratio(r: dict, rows: list[dict]) -> float | None:
    """A recipe's prune seconds over plain SparseGPT's at the same target, both timed by this script with the same
    thread count (the issue's cost yardstick); rows older than the field have none."""
    if r["library"] != "llmprune" or not r["prune_seconds"] or not r.get("produced_by"):
        return None
    for other in rows:
        if (other["library"], other["method"], other["pattern"], other["sparsity"], other.get("threads", "?")) == (
                "llmprune", "sparsegpt", r["pattern"], r["sparsity"], r["threads"]) and other["prune_seconds"] \
                and other.get("produced_by"):
            return r["prune_seconds"] / other["prune_seconds"]
    return None


def write_outputs(results: dict, out_dir: Path, name: str) -> None:
    results["rows"].sort(key=table_order)
    rows = [summary_row(r) for r in results["rows"]]
    results["table"] = rows
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    s, costs = results["settings"], results.get("costs") or {}
    forward_s = costs.get("calibration_forward_s")
    tasks = task_columns(rows, s)
    lines = [
        f"# Pruning results: {s['model']}",
        "",
        "Produced by:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"{results['started']} on {results['machine']}. Calibration: {s['nsamples']} x {s['seqlen']} tokens of the bundled "
        f"Wikipedia train split (seed {s['seed']}), the same windows for every method and library. Perplexity: bundled "
        f"Wikipedia test split, {s['eval_seqlen']}-token windows, "
        + (f"first {s['eval_windows']} windows" if s["eval_windows"] else "all windows")
        + f". Tasks: {s['tasks'] or 'none'}"
        + (f", first {s['task_limit']} documents each" if s["task_limit"] else ", all documents")
        + ", 0-shot, accuracy.",
        "",
        "| library | method | pattern | target | total sparsity | Wikipedia ppl | "
        + "".join(f"{task} acc | " for task in tasks) + "prune s | prune / fwd | prune / SparseGPT | peak RSS MB |",
        "|---|---|---|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|",
    ]
    for r in rows:
        # The forward-pass yardstick holds only for rows timed in the run that measured it (or older rows, which predate the field).
        same_run = r.get("produced_by") in (None, costs.get("produced_by"))
        ratio = r["prune_seconds"] / forward_s if r["prune_seconds"] and forward_s and same_run else None
        lines.append(
            f"| {r['library']} | {r['method']} | {r['pattern']} | {fmt(r['sparsity'])} | {fmt(r['total_sparsity'], 3)} | "
            f"{fmt(r['wikipedia_ppl'])} | " + "".join(f"{fmt(r.get(task + '_acc'), 3)} | " for task in tasks)
            + f"{fmt(r['prune_seconds'], 1)} | {fmt(ratio, 2)} | {fmt(sparsegpt_time_ratio(r, rows), 2)} | "
            f"{fmt(r['peak_rss_mb'], 0)} |"
        )
    lines.append("")
    lines.append("Recipes: a method and its modifiers: +reconstruct (block reconstruction, default settings), +owl / "
                 "+ramp / +auto (the per-block allocation). prune / SparseGPT: prune seconds over plain llmprune "
                 "SparseGPT's at the same target, timed with the same thread count (- for rows timed before this column).")
    if forward_s:
        lines.append(f"prune / fwd: prune seconds over one plain forward pass of the calibration batch through the dense "
                     f"model ({forward_s:.1f} s, measured once in the dense row's process). Peak RSS: the pruning process "
                     f"at the end of pruning (model load included).")
    cost = costs.get("ppl_cost")
    if cost:
        lines.append(f"Perplexity cost: {cost['perplexity_s']:.2f} s against {cost['plain_forward_s']:.2f} s for a plain batched "
                     f"forward pass over the same {cost['tokens']} tokens: **{cost['ratio']:.2f}x** (target <= 1.2x).")
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out_dir / f"{name}.png", s)


def plot(rows: list[dict], path: Path, settings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = [r for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(dense[0]["wikipedia_ppl"], color="grey", linestyle=":", label=f"dense ({dense[0]['wikipedia_ppl']:.1f})")
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] != "dense":
            series.setdefault(f"{r['method']} ({r['library']})", []).append(r)
    for i, (label, items) in enumerate(series.items()):
        color = f"C{i}"
        unstructured = sorted((r for r in items if r["pattern"] == "unstructured"), key=lambda r: r["sparsity"])
        if unstructured:
            ax.plot([r["sparsity"] for r in unstructured], [r["wikipedia_ppl"] for r in unstructured], "o-", color=color, label=label)
        # N:M points sit at 0.5 like the 50% unstructured ones; shift each series a little to keep them apart.
        shift = 0.006 * (i - (len(series) - 1) / 2)
        for r in items:
            if r["pattern"] != "unstructured":
                ax.plot([r["sparsity"] + shift], [r["wikipedia_ppl"]], "s", color=color, markerfacecolor="none",
                        label=None if unstructured else label)
                ax.annotate(r["pattern"], (r["sparsity"] + shift, r["wikipedia_ppl"]), textcoords="offset points",
                            xytext=(4, 3), fontsize=7, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (squares: N:M patterns)")
    ax.set_ylabel("Wikipedia test perplexity (log)")
    ax.set_title(f"{settings['model']}: perplexity vs sparsity ({settings['nsamples']}x{settings['seqlen']} calibration)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker)
    from transformers import AutoTokenizer

    from llmprune.calibration import calibration_batch
    from llmprune.io.loading import resolve_model_path

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peer = find_peer(args)
    notes = []
    wants_peer_rows = "llmcompressor" in split_list(args.libraries) and any(peer_can_run(m) for m in split_list(args.methods))
    if peer is None and not args.no_peer and wants_peer_rows:
        notes.append("llmcompressor rows skipped: not importable here and no --peer-python given "
                     "(llmcompressor 0.14 needs transformers<=5.17; install it in its own venv).")
    notes += args.note or []
    command = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)") + " " + shlex.join(
        [".venv/bin/python", "eval/bench_results_table.py", *(argv if argv is not None else sys.argv[1:])])
    results_path = out_dir / f"{args.name}.json"
    previous = json.loads(results_path.read_text()) if args.resume and results_path.exists() else None
    if previous and previous.get("settings") != settings_of(args):
        print("settings differ from the saved results; starting afresh", flush=True)
        previous = None
    done = {row_key(r["row"]): r for r in (previous or {}).get("rows", [])}
    results = {
        "command": command,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
        "settings": settings_of(args),
        "costs": (previous or {}).get("costs"),
        "rows": [],
        "notes": notes,
    }
    results["notes"] += [n for n in (previous or {}).get("notes", []) if n not in results["notes"]]
    if previous and previous.get("command") != command:
        results["notes"].append(f"rows kept from an earlier run (--resume) produced by: `{previous['command']}`")
    for other in split_list(args.merge):
        data = json.loads(Path(other).read_text())
        if not same_rows_setting(data.get("settings", {}), settings_of(args)):
            raise SystemExit(f"{other} was produced with other settings; not merged")
        known = {row_key(r["row"]): r for r in results["rows"]}
        for row in data["rows"]:
            if row_key(row["row"]) in known:
                if row["row"]["method"] == "dense":  # the same model in both runs: its task scores can join
                    add_missing_tasks(known[row_key(row["row"])], row)
            elif row_key(row["row"]) not in done:
                results["rows"].append(row)
        results["costs"] = results["costs"] or data.get("costs")
        results["notes"].append(f"rows merged from {Path(other).name}, produced by: `{data['command']}`")
        results["notes"] += [n for n in data.get("notes", []) if n not in results["notes"]]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    calibration_ids = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, args.seed)
    with tempfile.TemporaryDirectory(prefix="llmprune-bench-") as tmp:
        work = Path(tmp)
        calibration = work / "calibration.json"
        calibration.write_text(json.dumps(calibration_ids.tolist()))
        planned = plan_rows(args, peer is not None)
        planned_keys = {row_key(row) for row in planned}
        # Rows of an earlier run with the same settings but not planned now (other --methods) are kept.
        results["rows"] += [r for key, r in done.items() if key not in planned_keys]
        for row in planned:
            key = row_key(row)
            if key in done:
                results["rows"].append(done[key])
                continue
            started = time.perf_counter()
            print(f"== {key}", flush=True)
            try:
                result = run_row(row, args, work, calibration, peer)
            except RuntimeError as exc:
                print(f"   FAILED: {exc}", flush=True)
                results["notes"].append(f"{key} failed: {str(exc).splitlines()[0]}")
                continue
            if "costs" in result:
                results["costs"] = dict(result["costs"], produced_by=command)
                cost = result["costs"]["ppl_cost"]
                print(f"   perplexity cost {cost['ratio']:.2f}x a plain batched forward over {cost['tokens']} tokens "
                      f"({cost['perplexity_s']:.2f} s vs {cost['plain_forward_s']:.2f} s)", flush=True)
            result["produced_by"], result["threads"] = command, args.threads
            results["rows"].append(result)
            summary = summary_row(result)
            accuracies = "  ".join(f"{key[:-4]} {fmt(value, 3)}" for key, value in summary.items() if key.endswith("_acc"))
            print(f"   ppl {summary['wikipedia_ppl']:.2f}  {accuracies}  prune {fmt(summary['prune_seconds'], 1)} s  "
                  f"({time.perf_counter() - started:.0f} s in all)", flush=True)
            write_outputs(results, out_dir, args.name)  # after every row: an interrupted run keeps its rows
    write_outputs(results, out_dir, args.name)
    print(f"wrote {out_dir / args.name}.md, .json, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
