"""Evaluate a causal language model: perplexity and lm-eval tasks, on the in-memory model.

Perplexity follows the SparseGPT/Wanda protocol: the split is tokenised once, cut into
non-overlapping windows of --seqlen tokens (the remainder dropped), and
ppl = exp(mean negative log-likelihood of every predicted token).
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a model: perplexity and lm-eval tasks (offline: wiki_next, wiki_lastword, wiki_topic, rt_sentiment, wiki_ppl, code_next, code_name)"
EPILOG = """examples:
  llmprune eval --model llama                                  # bundled Wikipedia test perplexity
  llmprune eval --model out/llama-wanda-50 --tasks wiki_next,wiki_lastword --limit 200 --json eval.json
  llmprune eval --model llama --ppl wikipedia,my_notes.txt --seqlen 256 --eval-windows 40
  llmprune eval --model Qwen/Qwen3-0.6B --ppl wikitext2,c4 --tasks hellaswag,arc_easy   # needs the network

perplexity sources: wikipedia (bundled, default), wikitext2, ptb, c4 (hub, papers' protocol),
a local .txt/.jsonl/.json file, or another hub dataset (name or name:config); 'none' for no perplexity.
tasks: any lm-eval task name, or the offline tasks in eval/tasks (the tag llmprune_offline runs them all):
  wiki_next      pick a Wikipedia lead's true second sentence among 4 (acc, acc_norm; chance 0.25)
  wiki_lastword  predict the last word of a lead passage, LAMBADA-style (acc = greedy exact match, perplexity)
  wiki_topic     12-way topic of a lead sentence (acc; chance 0.083)
  rt_sentiment   Rotten Tomatoes snippets, positive or negative (acc; chance 0.5)
  wiki_ppl       rolling log-likelihood of each test article (word/byte perplexity)
At 135M parameters only wiki_next and wiki_lastword are well above chance and rank pruning methods.
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation flags, to destinations ppl, tasks, num_fewshot, limit, eval_seqlen, eval_windows,
    eval_batch_size (see ``eval_options``; the prune and shrink commands take theirs from their options)."""
    add = parser.add_argument_group("evaluation").add_argument
    add("--ppl", metavar="SOURCES", default="wikipedia",
        help="comma-separated perplexity sources: wikipedia, code, wikitext2, ptb, c4, a .txt/.jsonl file, or none"
        " (default: wikipedia)")
    add("--tasks", metavar="T1,T2", help="comma-separated lm-eval tasks (offline: wiki_next, wiki_lastword, wiki_topic, rt_sentiment, wiki_ppl, code_next, code_name)")
    add("--num-fewshot", type=int, help="few-shot examples per lm-eval task (default: the task's own)")
    add("--limit", type=float, help="at most this many documents per lm-eval task (below 1: a fraction)")
    add("--seqlen", dest="eval_seqlen", type=int, default=None,
        help="perplexity window length in tokens (default: 512, or the model's context if shorter)")
    add("--eval-windows", dest="eval_windows", type=int, default=None,
        help="score at most this many windows from the start (default: all; c4: 256)")
    add("--batch-size", dest="eval_batch_size", type=int, default=None,
        help="windows / lm-eval requests per forward pass (default: 4)")


def eval_options(args: argparse.Namespace) -> dict:
    """``evaluate()`` keyword arguments from parsed flags (absent flags keep evaluate's defaults)."""
    options = {"ppl": args.ppl, "tasks": args.tasks, "num_fewshot": args.num_fewshot, "limit": args.limit,
               "max_windows": args.eval_windows, "progress": args.progress}
    if args.eval_seqlen is not None:
        options["seqlen"] = args.eval_seqlen
    if args.eval_batch_size is not None:
        options["batch_size"] = args.eval_batch_size
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("model")
    what.add_argument("--model", required=True, help="alias (llama), model folder (a pruned output too), .gguf file or hub id")
    what.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: float32 on CPU, bfloat16 on GPU)")
    what.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    add_eval_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from ..api import evaluate_model
    from ..evaluate.run import format_table

    results = evaluate_model(args.model, dtype=args.dtype, device=args.device, json_path=args.json, **eval_options(args))
    print(format_table(results))
    if args.json:
        print(f"\nresults written to {Path(args.json).expanduser()}")
    return 0
