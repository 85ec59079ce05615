"""Do the offline zero-shot tasks rank pruning methods? Dense vs damaged models on wiki_next / wiki_lastword.

    python eval/bench_zero_shot.py [--methods dense,magnitude,wanda,sparsegpt] [--sparsity 0.5[,0.6,...]] \
        [--nsamples 8] [--seqlen 256] [--limit 200] [--eval-windows 16]

Prunes the bundled SmolLM2-135M (or --model) with each method at each sparsity, every time from the
same dense weights and calibration windows (Wikipedia train split, seed 0), and scores each model on the tasks
(--limit documents each, lm-eval, zero-shot) and on bundled-Wikipedia test perplexity (the first
--eval-windows 512-token windows, for comparison). Also reports each task's chance level and the
baselines that need no model, over the same documents. Writes eval/results/zero_shot_tasks.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmprune  # noqa: E402
from llmprune.api import calibration_batch  # noqa: E402
from llmprune.evaluate import evaluate  # noqa: E402
from llmprune.evaluate.tasks import NEXT_CHOICES, task_data_files  # noqa: E402
from llmprune.models import load_causal_lm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("wiki_next", "wiki_lastword")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def baselines(limit: int | None) -> dict:
    """Chance and model-free baselines of each task over the documents a run with ``limit`` scores."""
    out = {}
    next_docs = read_jsonl(task_data_files("wiki_next")["test"])[:limit]

    def by_length(doc: dict, longest: bool) -> float:
        # Credit split over tied lengths: a random pick among them, not the first position.
        lengths = [len(choice) for choice in doc["choices"]]
        best = max(lengths) if longest else min(lengths)
        return (lengths[doc["label"]] == best) / lengths.count(best)

    out["wiki_next"] = {
        "documents": len(next_docs),
        "chance": 1 / NEXT_CHOICES,
        "always_longest_choice": statistics.mean(by_length(d, True) for d in next_docs),
        "always_shortest_choice": statistics.mean(by_length(d, False) for d in next_docs),
    }
    files = task_data_files("wiki_lastword")
    last_docs = read_jsonl(files["test"])[:limit]
    commonest, _ = Counter(d["target"] for d in read_jsonl(files["train"])).most_common(1)[0]
    out["wiki_lastword"] = {
        "documents": len(last_docs),
        # The target always occurred earlier in the passage: copying one of the passage's distinct
        # words at random is the task's chance level; the commonest training target is a prior.
        "chance_copy_a_passage_word": statistics.mean(1 / len(set(_WORD.findall(d["context"]))) for d in last_docs),
        "commonest_train_target": commonest,
        "always_commonest_train_target": statistics.mean(d["target"] == commonest for d in last_docs),
    }
    return out


SAME_SETTINGS = ("model", "nsamples", "seqlen", "limit", "eval_windows")


def read_earlier(args: argparse.Namespace) -> dict | None:
    """The results of ``--merge``, checked to share this run's settings; rows carry their sparsity."""
    if not args.merge:
        return None
    earlier = json.loads(Path(args.merge).read_text(encoding="utf-8"))
    differ = [key for key in SAME_SETTINGS if earlier["settings"][key] != getattr(args, key)]
    if differ:
        raise SystemExit(f"--merge {args.merge}: different {', '.join(differ)}")
    for row in earlier["rows"]:  # rows written before --sparsity took a list carry it in the settings
        row.setdefault("sparsity", None if row["method"] == "dense" else float(earlier["settings"]["sparsity"]))
    return earlier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama")
    parser.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt", help="'dense' is the unpruned model")
    parser.add_argument("--sparsity", default="0.5", help="unstructured sparsity, or several comma-separated")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--limit", type=int, default=200, help="documents per task (0 = all)")
    parser.add_argument("--eval-windows", type=int, default=16, help="perplexity windows (0 = all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--note", action="append", default=[], help="a line under the table (e.g. the machine's load)")
    parser.add_argument("--merge", help="a results JSON of an earlier run with the same settings: its rows come first")
    parser.add_argument("--output", default=str(RESULTS / "zero_shot_tasks"))
    args = parser.parse_args()
    command = "python eval/bench_zero_shot.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    limit = args.limit or None
    earlier = read_earlier(args)  # before minutes of work, so a mismatch fails at once

    model, tokenizer, _ = load_causal_lm(args.model, dtype="float32", device="cpu")
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    calibration = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "settings": {**vars(args), "calibration": "wikipedia train, seed 0", "num_fewshot": 0,
                     "ppl": "wikipedia test, 512-token windows", "torch_threads": torch.get_num_threads()},
        "baselines": baselines(limit),
        "rows": earlier["rows"] if earlier else [],
    }
    if earlier:
        result["earlier_commands"] = earlier.get("earlier_commands", []) + [earlier["command"]]
        result["settings"]["note"] = earlier["settings"].get("note", []) + args.note
    started = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sparsities = [float(s) for s in args.sparsity.split(",")]
    runs = [(m, None) for m in methods if m == "dense"] + [(m, s) for s in sparsities for m in methods if m != "dense"]
    for method, sparsity in runs:
        model.load_state_dict(dense)
        row: dict = {"method": method, "sparsity": sparsity}
        if method != "dense":
            report = llmprune.prune(model, tokenizer, method=method, sparsity=sparsity,
                                    calibration_ids=calibration, device="cpu", progress=False)
            row.update(total_sparsity=report["total_sparsity"], prune_seconds=report["prune_seconds"])
        scores = evaluate(model, tokenizer, ppl="wikipedia", max_windows=args.eval_windows or None, tasks=",".join(TASKS),
                          limit=limit, batch_size=args.batch_size, progress=False)
        row["ppl"] = scores["ppl"]["wikipedia"]["ppl"]
        row["tasks"] = scores["lm_eval"]["tasks"]
        row["eval_seconds"] = scores["lm_eval"]["seconds"]
        row["load_average_1min"] = os.getloadavg()[0]  # the machine is shared: how busy it was
        result["versions"] = scores["versions"]  # with lm-eval's
        result["rows"].append(row)
        result["seconds"] = round(time.perf_counter() - started, 1)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")  # after every row
        print(f"{method}: ppl {row['ppl']:.2f}, " + ", ".join(
            f"{task} acc {row['tasks'][task]['acc']:.3f}" for task in TASKS), flush=True)
    out.with_suffix(".md").write_text(markdown(result, args) + "\n", encoding="utf-8")
    print(markdown(result, args))


def markdown(result: dict, args: argparse.Namespace) -> str:
    base = result["baselines"]
    lines = [
        "# Offline zero-shot tasks on the bundled SmolLM2-135M: dense and pruned", "",
        *(["Commands, in the order of their rows:", ""] if result.get("earlier_commands") else []),
        *[f"- `{command}`" for command in result.get("earlier_commands", [])],
        f"- `{result['command']}`" if result.get("earlier_commands") else f"Command: `{result['command']}`", "",
        f"Zero-shot, lm-eval {result['versions'].get('lm_eval', '')}, float32, CPU, {result['settings']['torch_threads']} torch threads. "
        f"Pruned models: unstructured, calibration {args.nsamples} x {args.seqlen} tokens (Wikipedia train, seed 0), "
        f"all from the same dense weights. Tasks score the first {base['wiki_next']['documents']} (wiki_next) and "
        f"{base['wiki_lastword']['documents']} (wiki_lastword) test documents; perplexity: bundled Wikipedia test split, "
        f"first {args.eval_windows or 'all'} 512-token windows. +- is lm-eval's standard error.", "",
        "| model | Wikipedia ppl | wiki_next acc | wiki_next acc_norm | wiki_lastword acc | wiki_lastword ppl | prune s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        nxt, last = row["tasks"]["wiki_next"], row["tasks"]["wiki_lastword"]
        name = row["method"] if row["sparsity"] is None else f"{row['method']} {row['sparsity']:.0%}"
        seconds = f"{row['prune_seconds']:.0f}" if "prune_seconds" in row else "-"
        lines.append(
            f"| {name} | {row['ppl']:.2f} | {nxt['acc']:.3f} +- {nxt['acc_stderr']:.3f} | "
            f"{nxt['acc_norm']:.3f} +- {nxt['acc_norm_stderr']:.3f} | {last['acc']:.3f} +- {last['acc_stderr']:.3f} | "
            f"{last['perplexity']:.1f} | {seconds} |"
        )
    nb, lb = base["wiki_next"], base["wiki_lastword"]
    lines += [
        "", "Chance and model-free baselines on the same documents:", "",
        f"- wiki_next: chance {nb['chance']:.3f} (4 choices; answer positions balanced); always the longest choice "
        f"{nb['always_longest_choice']:.3f}, always the shortest {nb['always_shortest_choice']:.3f} (ties in length split evenly).",
        f"- wiki_lastword: copying a random distinct word of the passage {lb['chance_copy_a_passage_word']:.3f} "
        f"(the target always occurs earlier in it); always the commonest training target ('{lb['commonest_train_target']}') "
        f"{lb['always_commonest_train_target']:.3f}.",
    ]
    loads = [row["load_average_1min"] for row in result["rows"] if "load_average_1min" in row]
    if loads:
        lines.append(f"\nOne-minute load average of the (shared, 2-core) machine after each row that recorded it: {min(loads):.1f}-{max(loads):.1f}.")
    lines += [f"\n{note}" for note in result["settings"]["note"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
