"""Find lottery tickets in a pretrained BERT-family encoder by iterative magnitude pruning (IMP).

Each round fine-tunes on the task, prunes the smallest-magnitude encoder and pooler weights
globally (one threshold across all matrices), and rewinds the survivors to the pretrained
weights (or to those after K steps with --rewind step:K); the classifier head restarts from
its initial values. Baselines at the same sparsities: random pruning, random re-initialisation
with the IMP mask, one-shot magnitude pruning. After every round the mask and metrics are on
disk: the same command started again resumes at the next unfinished round.

Writes imp_report.json/.csv/.png into --output, prints the highest matching sparsity (the
ticket's mean metric within one std of the dense model's) and saves that ticket as a model
folder (--output/ticket).
"""
from __future__ import annotations

import argparse

from .dataclass_flags import add_dataclass_arguments, options_from_args

HELP = "lottery tickets for BERT: iterative magnitude pruning with rewinding, and baselines"
EPILOG = """examples:
  llmprune imp --model minilm --task rt-polarity --max-train-samples 3000 --rounds 5 --output runs/rt
  llmprune imp --config configs/imp-rt-polarity.yaml --seeds 3 --baselines all
  llmprune imp --model bert-base-uncased --task sst2 --schedule geometric --rate 0.2 --target-sparsity 0.8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tickets.bert.imp_options import IMPOptions

    add_dataclass_arguments(parser, IMPOptions)


def run(args: argparse.Namespace) -> int:
    from ..api import find_bert_tickets
    from ..tickets.bert.imp_options import IMPOptions

    report = find_bert_tickets(options_from_args(IMPOptions, args))
    dense = report["dense"]
    print(f"dense {report['metric']}: {dense['mean']:.4f} ± {dense['std']:.4f} over {len(report['seeds'])} seed(s)")
    for row in report["rows"][1:]:
        extras = "  ".join(f"{k} {row[k]['mean']:.4f}" for k in ("random-prune", "random-reinit", "one-shot") if k in row)
        flag = "matching" if row["matching"] else ""
        print(f"round {row['round']} sparsity {row['sparsity']:.1%}: ticket {row['imp']['mean']:.4f} "
              f"± {row['imp']['std']:.4f}  {extras}  {flag}".rstrip())
    print(f"highest matching sparsity: {report['highest_matching_sparsity']:.1%}")
    print(f"report: {report['files']['json']} (+ .csv, .png)")
    print(f"ticket: {report['ticket'] or 'none (no pruned level matched the dense model)'}")
    return 0
