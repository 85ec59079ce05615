"""Score a saved sequence classifier on a GLUE task, an offline stand-in, or a local file.

The model folder must hold a classification head with as many labels as the task (a model
fine-tuned by llmprune imp, or any BERT-family classifier). Prints the task's official
metrics on its validation split(s) and, with --json, writes them to a file.
"""
from __future__ import annotations

import argparse


HELP = "score a saved classifier on a GLUE / offline / local task with its official metric"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="a classifier model folder (or hub id)")
    a("--task", required=True, help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, rt-polarity, wiki-topic, or .csv/.jsonl")
    a("--eval-file", help="validation file for a .csv/.jsonl task")
    a("--max-eval-samples", type=int, help="score a fixed subset of this many examples")
    a("--max-length", type=int, default=128, help="tokens per example (default 128)")
    a("--batch-size", type=int, default=128, help="evaluation batch size (default 128)")
    a("--json", help="also write the metrics to this file")


def run(args: argparse.Namespace) -> int:
    from ..api import score_classifier

    result = score_classifier(args.model, args.task, args.eval_file, args.max_eval_samples, args.max_length,
                              args.batch_size, json_path=args.json)
    for name, value in result["metrics"].items():
        print(f"{result['task']} {name}: {value:.4f}")
    return 0
