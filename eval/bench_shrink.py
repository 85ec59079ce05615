"""Structured pruning on the bundled SmolLM2-135M: quality, speed and memory, dense and shrunk in one run.

    python eval/bench_shrink.py --ratios 0.25 --eval-windows 64                  # every recipe at R = 0.25
    python eval/bench_shrink.py --ratios 0.1,0.25,0.4 --recipes mlp:obs,blocks:angular
    python eval/bench_shrink.py --peer-python /tmp/tpvenv/bin/python             # torch-pruning side by side
    python eval/bench_shrink.py --ratios 0.1,0.25,0.4 --recipes 'mlp,heads:hessian mlp,heads:hessian:recon@0.25'

A recipe is UNITS:SCORE[:FLAG...] (e.g. ``mlp,heads:hessian``; ``blocks:angular``; ``mlp:magnitude:nocomp`` is plain
magnitude channel pruning without the least-squares re-fit; ``:teacher`` re-fits to the dense model's outputs
instead of the layer's own; ``:recon`` adds block reconstruction). Each recipe runs in its own process on the same
calibration windows (--nsamples x --seqlen of the Wikipedia train split, seed 0): shrink, time, Wikipedia
test perplexity over the first --eval-windows 512-token windows, rt_sentiment / wiki_topic accuracy on
--task-limit documents (0: skipped), save. The yardstick of the shrink cost is a plain forward pass of the
same calibration batch, in the dense worker. Then one process measures CPU prefill tokens/s (512 tokens,
batch 1 and 8) and decode tokens/s (batch 1, 128 new tokens with the KV cache) in float32 and bfloat16,
the models taking turns in every repeat (best of --repeats), and a process per model measures the peak
resident memory of load + generate. Writes eval/results/shrink.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results"
DEFAULT_RECIPES = ("mlp:magnitude:nocomp", "mlp:magnitude", "mlp:wanda", "mlp:fluctuation", "mlp:hessian", "mlp:obs",
                   "mlp,heads:obs", "mlp,blocks:obs", "blocks:angular", "blocks:span")


def parse_recipe(text: str) -> dict:
    """UNITS:SCORE[:FLAG...]; SCORE ranks channels and heads (magnitude, ..., obs) or blocks (angular, span,
    loss); flags: nocomp (no least-squares re-fit), teacher (re-fit to the dense model's outputs instead of
    the layer's own), recon (block reconstruction afterwards, the default settings), bridge (the removed
    blocks' linear correction), and angular/span/loss (the block score beside a channel score:
    mlp,blocks:hessian:loss). Every other option keeps llmprune's default."""
    parts = text.split(":")
    units, score = parts[0], parts[1] if len(parts) > 1 else "hessian"
    flags = set(parts[2:])
    block_scores = {"angular", "span", "loss"}
    unknown = flags - {"nocomp", "teacher", "recon", "bridge"} - block_scores
    if unknown:
        raise SystemExit(f"unknown recipe flag(s) {', '.join(sorted(unknown))} in {text}")
    block_score = score if score in block_scores else next(iter(sorted(flags & block_scores)), "angular")
    return {"units": units, "score": "hessian" if score in block_scores else score, "block_score": block_score,
            "compensate": "nocomp" not in flags, **({"refit_target": "teacher"} if "teacher" in flags else {}),
            "reconstruct": "recon" in flags, "block_correction": "bridge" in flags}


def recipe_ratios(text: str) -> tuple[str, list[float] | None]:
    """``RECIPE@R1/R2``: the recipe runs at those ratios only (``mlp,heads:hessian:recon@0.25``)."""
    recipe, _, ratios = text.partition("@")
    return recipe, [float(r) for r in ratios.split("/")] if ratios else None


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def recipes_arg(text: str) -> list[str]:
    # Recipes hold commas themselves (mlp,heads:obs): they are separated by semicolons or spaces.
    # With a semicolon, only semicolons separate (the peer's rows are named "torch-pruning taylor").
    return [part.strip() for part in text.split(";") if part.strip()] if ";" in text else text.split()


# ------------------------------------------------------------------------------------------ workers

def quality_worker(spec: dict) -> dict:
    import torch

    import llmprune
    from llmprune.api import save_pretrained
    from llmprune.process import peak_rss_mb
    from llmprune.evaluate import evaluate
    from llmprune.structured import shrink

    torch.set_num_threads(spec["threads"])
    model, tokenizer = llmprune.load_model(spec["model"], dtype="float32", device="cpu")
    calibration = torch.tensor(json.loads(Path(spec["calibration"]).read_text()))
    row = {"recipe": spec["recipe"], "ratio": spec.get("ratio")}
    if spec["recipe"] == "dense":
        with torch.no_grad():
            started = time.perf_counter()
            model(input_ids=calibration, use_cache=False, logits_to_keep=1)
            row["calibration_forward_s"] = round(time.perf_counter() - started, 2)
    elif spec["recipe"].startswith("torch-pruning"):

        folder = Path(spec["peer_folder"])
        model = __import__("transformers").AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        row["shrink_seconds"] = json.loads((folder / "peer_report.json").read_text())["seconds"]
    else:
        report = shrink(model, tokenizer, ratio=spec["ratio"], multiple_of=spec["multiple_of"], calibration_ids=calibration,
                        progress=False, device="cpu", **parse_recipe(spec["recipe"]))
        healed = report.get("reconstruct") or {}
        row.update(shrink_seconds=report["shrink_seconds"], ratio_reached=report["ratio_reached"], kept=report["kept"],
                   removed_blocks=report["removed_blocks"], shrink_peak_rss_mb=round(peak_rss_mb(), 1),
                   reconstruct_seconds=healed.get("seconds"),
                   held_out_block_error=[healed.get("mean_held_out_error_before"), healed.get("mean_held_out_error_after")]
                   if healed else None)
    row["parameters"] = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    results = evaluate(model, tokenizer, ppl="wikipedia", tasks=spec["tasks"] if spec["task_limit"] else None,
                       max_windows=spec["eval_windows"], limit=spec["task_limit"] or None, batch_size=4, progress=False)
    row["eval_seconds"] = round(time.perf_counter() - started, 1)
    row["wikipedia_ppl"] = round(results["ppl"]["wikipedia"]["ppl"], 3)
    tasks = results.get("lm_eval", {}).get("tasks", {})
    for task in split(spec["tasks"]):
        row[f"{task}_acc"] = tasks.get(task, {}).get("acc")
    if spec.get("save"):
        save_pretrained(model, tokenizer, spec["save"], {"method": "shrink", "recipe": spec["recipe"]}, overwrite=True)
        row["folder"] = spec["save"]
    return row


def memory_worker(spec: dict) -> dict:
    """Peak resident memory of loading a folder and generating --decode-tokens tokens, in a fresh process."""
    import torch
    import transformers

    from llmprune.process import peak_rss_mb

    torch.set_num_threads(spec["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=spec["decode_tokens"], do_sample=False, use_cache=True, pad_token_id=0)
    return {"peak_rss_mb": round(peak_rss_mb(), 1)}


def speed_worker(spec: dict) -> dict:
    import torch
    import transformers

    from bench_speed import decode_tps, prefill_tps

    torch.set_num_threads(spec["threads"])
    rows = []
    for dtype_name in spec["dtypes"]:
        dtype = getattr(torch, dtype_name)
        models = {label: transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
                  for label, folder in spec["folders"].items()}
        vocab = next(iter(models.values())).config.vocab_size
        best = {label: {"prefill_b1": 0.0, "prefill_b8": 0.0, "decode_b1": 0.0} for label in models}
        for _ in range(spec["repeats"]):
            for label, model in models.items():  # taking turns, so a busy neighbour slows them alike
                b = best[label]
                b["prefill_b1"] = max(b["prefill_b1"], prefill_tps(model, 1, spec["prefill_len"], vocab, "cpu", 1))
                b["prefill_b8"] = max(b["prefill_b8"], prefill_tps(model, 8, spec["prefill_len"], vocab, "cpu", 1))
                b["decode_b1"] = max(b["decode_b1"], decode_tps(model, 1, 32, spec["decode_tokens"], vocab, "cpu", 1))
        for label, values in best.items():
            rows.append({"model": label, "dtype": dtype_name, **{k: round(v, 1) for k, v in values.items()}})
            print(f"{label:>32} {dtype_name:>9}: " + ", ".join(f"{k} {v:.1f}" for k, v in values.items()), flush=True)
        del models
    return {"rows": rows}


WORKERS = {"quality": quality_worker, "memory": memory_worker, "speed": speed_worker}


def thread_env(threads: int) -> dict:
    """The environment of a worker: its BLAS/OpenMP pools are as wide as its torch threads."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_worker(kind: str, spec: dict, work: Path) -> dict:
    spec_path = work / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--worker", kind, str(spec_path), str(out_path)], check=True,
                   env=thread_env(spec["threads"]))
    return json.loads(out_path.read_text())


# ------------------------------------------------------------------------------------------ driver

def resolve_folder(spec: str) -> str:
    from llmprune.io.loading import resolve_model_path

    return resolve_model_path(spec)


def peer_shrink(args, calibration: Path, ratio: float, importance: str, work: Path) -> str:
    folder = work / f"torch-pruning-{importance}-{ratio}"
    subprocess.run([args.peer_python, str(HERE / "peer_torch_pruning.py"), "--model", resolve_folder(args.model), "--calibration", str(calibration),
                    "--ratio", str(ratio), "--importance", importance, "--output", str(folder),
                    "--threads", str(args.threads)], check=True, env=thread_env(args.threads))
    return str(folder)


def measure_speed(result: dict, rows: list[dict], args, work: Path) -> None:
    """Speed (one process, models taking turns) and peak memory (a process each) of dense and the chosen recipes."""
    chosen = [recipe_ratios(text) for text in args.speed_recipes] if args.speed_recipes else None

    def wanted(row: dict) -> bool:
        return chosen is None or any(row["recipe"] == recipe and (ratios is None or row["ratio"] in ratios)
                                     for recipe, ratios in chosen)

    folders = {"dense": rows[0]["folder"]}
    for row in rows[1:]:
        if wanted(row) and Path(row.get("folder", "")).is_dir():
            folders[_label(row)] = row["folder"]
    result["speed_settings"] = {"dtypes": args.dtypes, "repeats": args.repeats, "prefill_len": args.prefill_len,
                                "decode_tokens": args.decode_tokens, "threads": args.threads}
    result["speed"] = run_worker("speed", {"folders": folders, "threads": args.threads, "dtypes": split(args.dtypes),
                                           "repeats": args.repeats, "prefill_len": args.prefill_len,
                                           "decode_tokens": args.decode_tokens}, work)["rows"]
    result["memory"] = {label: run_worker("memory", {"folder": folder, "threads": args.threads,
                                                     "decode_tokens": args.decode_tokens}, work)["peak_rss_mb"]
                        for label, folder in folders.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default="llama", help="alias or folder (the results are written for the bundled model)")
    parser.add_argument("--ratios", default="0.25")
    parser.add_argument("--recipes", type=recipes_arg, default=list(DEFAULT_RECIPES), help="space- or ;-separated recipes")
    parser.add_argument("--speed-recipes", type=recipes_arg, default=None, help="recipes (RECIPE or RECIPE@R) whose speed and memory are measured (default: all)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--multiple-of", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--tasks", default="rt_sentiment,wiki_topic")
    parser.add_argument("--task-limit", type=int, default=0, help="documents per task (0: skip the tasks)")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker (1: the measurements of eval/results/shrink.md)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--peer-python", help="a Python with torch-pruning installed (its own venv)")
    parser.add_argument("--peer-importances", default="taylor,magnitude", help="torch-pruning importances to run")
    parser.add_argument("--peer-ratios", help="the ratios the peer runs at (default: every ratio)")
    parser.add_argument("--speed-from", metavar="JSON", help="skip the quality runs: measure speed and memory of the "
                        "folders an earlier (perhaps interrupted) run of this script recorded in JSON, and rewrite its results")
    parser.add_argument("--resume", metavar="JSON", help="reuse the rows (recipe, ratio) of an earlier run's JSON whose "
                        "saved folders still exist; the calibration must be the same (same --nsamples, --seqlen)")
    parser.add_argument("--output", default=str(RESULTS / "shrink"))
    args = parser.parse_args(argv)
    if args.worker:
        kind, spec_path, out_path = args.worker
        Path(out_path).write_text(json.dumps(WORKERS[kind](json.loads(Path(spec_path).read_text()))))
        return 0

    from llmprune.calibration import calibration_batch
    from llmprune.process import versions
    from llmprune.io.loading import load_causal_lm, resolve_model_path

    command = "python eval/bench_shrink.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    work = Path(tempfile.mkdtemp(prefix="bench-shrink-"))
    _, tokenizer, dense_folder = load_causal_lm(args.model, dtype="float32", device="cpu")
    calibration = work / "calibration.json"
    calibration.write_text(json.dumps(calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0).tolist()))
    base = {"model": args.model, "calibration": str(calibration), "threads": args.threads, "eval_windows": args.eval_windows,
            "tasks": args.tasks, "task_limit": args.task_limit, "multiple_of": args.multiple_of}
    started = time.time()
    if args.speed_from:
        result = json.loads(Path(args.speed_from).read_text())
        result["speed_command"] = command
        measure_speed(result, result["quality"], args, work)
        result["speed_wall_seconds"] = round(time.time() - started)
        write(result, Path(args.output))
        return 0
    result = {"command": command, "settings": {k: v for k, v in vars(args).items() if k != "worker"}, "versions": versions(),
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}
    earlier = {(row["recipe"], row.get("ratio")): row for row in json.loads(Path(args.resume).read_text())["quality"]} \
        if args.resume else {}

    def quality_row(spec: dict) -> dict:
        """A row of --resume's results when it has this recipe and ratio (and its folder), else a new run."""
        row = earlier.get((spec["recipe"], spec.get("ratio")))
        if row is None or not Path(row.get("folder", "")).is_dir():
            row = run_worker("quality", spec, work)
        print(json.dumps(row), flush=True)
        return row

    rows = result["quality"] = [quality_row({**base, "recipe": "dense"})]
    rows[0]["folder"] = resolve_model_path(args.model)
    for ratio in [float(r) for r in split(args.ratios)]:
        for recipe, ratios in (recipe_ratios(text) for text in args.recipes):
            if ratios is not None and ratio not in ratios:
                continue
            label = f"{recipe} @ {ratio}"
            rows.append(quality_row({**base, "recipe": recipe, "ratio": ratio, "save": str(work / label.replace(" ", ""))}))
            write({**result, "wall_seconds": round(time.time() - started)}, Path(args.output))  # partial results survive an interruption
        if args.peer_python and (args.peer_ratios is None or ratio in [float(r) for r in split(args.peer_ratios)]):
            for importance in split(args.peer_importances):
                folder = peer_shrink(args, calibration, ratio, importance, work)
                rows.append(quality_row({**base, "recipe": f"torch-pruning {importance}", "ratio": ratio,
                                         "peer_folder": folder, "save": folder}))
    if not args.no_speed:
        measure_speed(result, rows, args, work)
    result["wall_seconds"] = round(time.time() - started)
    write(result, Path(args.output))
    return 0


# ------------------------------------------------------------------------------------------ output

def _label(row: dict) -> str:
    return "dense" if row["recipe"] == "dense" else f"{row['recipe']} @ {row['ratio']}"


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    quality = result["quality"]
    dense = quality[0]
    s = result["settings"]
    tasks = split(s["tasks"]) if s["task_limit"] else []
    lines = ["# Structured pruning (llmprune shrink) on the bundled SmolLM2-135M", "", f"Command: `{result['command']}`", "",
             f"Started {result['started']}, {result['wall_seconds']} s in all, on this project's 2-CPU machine, shared with "
             f"another job; every worker ran with {s['threads']} torch thread(s) and OMP_NUM_THREADS={s['threads']} "
             f"(speeds are the best of {result.get('speed_settings', s)['repeats']} repeats, the models taking turns in each). "
             f"Calibration {s['nsamples']} x {s['seqlen']} Wikipedia train tokens; perplexity over the first {s['eval_windows']} "
             f"512-token Wikipedia test windows; --multiple-of {s['multiple_of']}. Ratio = fraction of the decoder blocks' "
             "parameters removed.", "",
             "| recipe | R | removed (blocks) | params | Wikipedia ppl | x dense | "
             + "".join(f"{t} acc | " for t in tasks) + "shrink s | shrink / forward | kept |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|---:|---|"]
    forward = dense.get("calibration_forward_s")
    for row in quality:
        shrink_s = row.get("shrink_seconds")
        # Rows merged from another run carry that run's own yardstick (its dense forward, same calibration).
        yardstick = row.get("yardstick_forward_s", forward)
        cost = f"{shrink_s / yardstick:.2f}x" if shrink_s and yardstick else "-"
        kept = row.get("kept") or {}
        reached = f"{row['ratio_reached']:.3f}" if "ratio_reached" in row else "-"
        kept_text = ", ".join(f"{k.replace('num_', '').replace('_size', '')} {v}" for k, v in kept.items()) if kept else "-"
        lines.append(f"| {row['recipe']} | {row.get('ratio') or '-'} | {reached} | {row['parameters'] / 1e6:.2f}M | "
                     f"{row['wikipedia_ppl']:.2f} | {row['wikipedia_ppl'] / dense['wikipedia_ppl']:.2f} | "
                     + "".join(f"{row.get(f'{t}_acc') if row.get(f'{t}_acc') is not None else '-'} | " for t in tasks)
                     + f"{shrink_s if shrink_s is not None else '-'} | {cost} | {kept_text} |")
    if forward:
        lines += ["", f"Yardstick: a plain forward pass of the calibration batch took {forward} s in the dense worker."]
        others = sorted({row["yardstick_forward_s"] for row in quality if "yardstick_forward_s" in row})
        if others:
            lines[-1] += (" Rows merged from a later run on the same calibration are measured against that run's own "
                          f"dense forward ({', '.join(f'{v} s' for v in others)}); see the notes.")
    healed = [row for row in quality if row.get("held_out_block_error")]
    if healed:
        lines += ["", "Block reconstruction (`:recon`, default settings): mean held-out block output error, relative to "
                  "the dense block's outputs, before -> after training; seconds of training (inside shrink s):", ""]
        lines += [f"- {_label(row)}: {row['held_out_block_error'][0]:.4f} -> {row['held_out_block_error'][1]:.4f}, "
                  f"{row['reconstruct_seconds']} s" for row in healed]
    if result.get("speed"):
        lines += ["", "## CPU speed (tokens/s) and peak memory of load + generate", "",
                  "| model | dtype | prefill b1 | x dense | prefill b8 | x dense | decode b1 | x dense | peak MiB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = {row["dtype"]: row for row in result["speed"] if row["model"] == "dense"}
        for row in result["speed"]:
            ref = base[row["dtype"]]
            lines.append(f"| {row['model']} | {row['dtype']} | {row['prefill_b1']} | {row['prefill_b1'] / ref['prefill_b1']:.2f} | "
                         f"{row['prefill_b8']} | {row['prefill_b8'] / ref['prefill_b8']:.2f} | {row['decode_b1']} | "
                         f"{row['decode_b1'] / ref['decode_b1']:.2f} | {result['memory'].get(row['model'], '-')} |")
        dense_params = dense["parameters"]
        lines += ["", "Memory: peak resident memory of a fresh process that loads the folder (float32) and generates "
                  f"{result.get('speed_settings', s)['decode_tokens']} tokens. Bytes removed vs memory saved:", ""]
        for row in quality[1:]:
            label = _label(row)
            if label in result["memory"]:
                removed_mb = (dense_params - row["parameters"]) * 4 / 2**20
                saved = result["memory"]["dense"] - result["memory"][label]
                lines.append(f"- {label}: {removed_mb:.0f} MiB of float32 parameters removed, peak {saved:.0f} MiB lower "
                             f"({saved / removed_mb:.0%} of the removed bytes)" if removed_mb > 0 else f"- {label}: nothing removed")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    if result.get("speed_command"):
        lines += ["", f"Speed and memory measured afterwards by `{result['speed_command']}`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = result["quality"]
    dense = quality[0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    recipes = sorted({row["recipe"] for row in quality[1:]})
    for i, recipe in enumerate(recipes):
        items = sorted((r for r in quality[1:] if r["recipe"] == recipe), key=lambda r: r["ratio"])
        axes[0].plot([1 - r["parameters"] / dense["parameters"] for r in items], [r["wikipedia_ppl"] for r in items], "o-",
                     color=f"C{i % 10}", label=recipe)
    axes[0].axhline(dense["wikipedia_ppl"], color="grey", linestyle=":", label=f"dense ({dense['wikipedia_ppl']:.1f})")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("fraction of all parameters removed")
    axes[0].set_ylabel("Wikipedia test perplexity (log)")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, which="both", alpha=0.3)
    if result.get("speed"):
        params = {_label(row): row["parameters"] for row in quality}
        for j, (key, marker) in enumerate((("prefill_b1", "o"), ("prefill_b8", "s"), ("decode_b1", "^"))):
            for dtype, style in (("float32", "-"), ("bfloat16", "--")):
                rows = [r for r in result["speed"] if r["dtype"] == dtype and r["model"] in params]
                if not rows:
                    continue
                ref = next(r for r in rows if r["model"] == "dense")[key]
                xs = [1 - params[r["model"]] / dense["parameters"] for r in rows]
                axes[1].plot(xs, [r[key] / ref for r in rows], marker, color=f"C{j}", label=f"{key} {dtype}",
                             markerfacecolor="none" if dtype == "bfloat16" else None, linestyle="none")
        axes[1].axhline(1.0, color="grey", linestyle=":")
        axes[1].set_xlabel("fraction of all parameters removed")
        axes[1].set_ylabel("tokens/s relative to dense")
        axes[1].legend(fontsize=7)
        axes[1].grid(True, alpha=0.3)
    fig.suptitle("llmprune shrink on SmolLM2-135M")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
