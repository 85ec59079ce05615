"""The original lottery-ticket experiments (Frankle & Carbin 2019): iterative magnitude pruning of
LeNet-300-100, Conv-2/4/6 or any fully connected net, rewinding to the initialisation, with the
controls that make the claim falsifiable.

Each round trains from the (rewound) initial weights with the paper's protocol (--preset), prunes a
share of each layer's surviving weights (the output layer at half the rate) and rewinds the
survivors to their initial values (or, with --rewind step:K, to those after K iterations).
Controls at every level, with the same budget: reinit (the ticket's mask, fresh weights),
random-mask (the same per-layer sparsity, the original initialisation), one-shot (pruned to that
level at once). Validation and test are evaluated every --eval-every iterations; the early stop is
the lowest validation loss. Jobs that do not depend on each other (every trial's ticket of a round
and its controls of that round) train together as one stacked model (--parallel-jobs; 1 trains one
model at a time).

Writes lth_report.json/.csv and the plots (test accuracy at the early stop and early-stop iteration
against the weights remaining, learning curves) into --output, and the winning ticket (mask +
initial weights, safetensors) into --output/ticket. The same command started again after a kill
resumes at the first unfinished job. --preset sum-of-two runs the toy y = x1 + x2.
"""
from __future__ import annotations

import argparse

from .dataclass_flags import add_dataclass_arguments, options_from_args

HELP = "lottery tickets from scratch: LeNet, Conv-2/4/6, MLPs, with controls (Frankle & Carbin)"
EPILOG = """examples:
  llmprune lth --preset lenet --data fashion-mnist --trials 3 --controls reinit --output runs/lenet
  llmprune lth --preset lenet --data mnist1d --hidden 100,100 --iterations 3000 --controls all --output runs/m1d
  llmprune lth --preset conv2 --data cifar10 --rewind step:500 --output runs/conv2      (needs the network)
  llmprune lth --preset sum-of-two --output runs/toy
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tickets.scratch.lth_options import LTHOptions

    add_dataclass_arguments(parser, LTHOptions)


def _cell(entry: dict, key: str, scale: float, form: str) -> str:
    stat = entry[key]
    return f"{scale * stat['mean']:{form}} [{scale * stat['min']:{form}}, {scale * stat['max']:{form}}]"


def run(args: argparse.Namespace) -> int:
    from ..api import find_tickets_from_scratch
    from ..tickets.scratch.lth_options import LTHOptions

    report = find_tickets_from_scratch(options_from_args(LTHOptions, args))
    key = report["score"]
    accuracy = key == "test_accuracy"
    scale, unit = (100, "%") if accuracy else (1, "")
    print(f"{report['preset']} on {report['data']['name']}, {len(report['trials'])} trial(s); "
          f"{key} at the early stop{unit and ' (%)'}, mean [min, max]; early-stop iteration")
    for row in report["rounds"]:
        cells = "  ".join(f"{arm} {_cell(entry, key, scale, '.2f' if accuracy else '.3g')} @ {entry['early_stop_iteration']['mean']:.0f}"
                          for arm, entry in row["arms"].items())
        print(f"round {row['round']:>2} remaining {100 * row['remaining']:6.2f}%: {cells}")
    matching = report["matching"]
    print(f"tickets match the dense network down to {100 * matching['down_to_remaining']:.1f}% of the weights "
          f"(round {matching['down_to_round']})")
    if report["preset"] == "sum-of-two":
        for trial, layers in report["surviving_weights"].items():
            print(f"surviving weights ({trial}): " + "; ".join(
                f"{name}[{','.join(map(str, w[:-1]))}] = {w[-1]:.4f}" for name, ws in (layers or {}).items() for w in ws))
        for name in ("ticket_ood_rmse", "full_ood_rmse", "reinit_ticket_ood_rmse", "permuted_ticket_ood_rmse"):
            print(f"{name}: {report[name]:.4g}" if report[name] is not None else f"{name}: -")
    print(f"report: {report['files']['json']} (+ .csv, plots)")
    print(f"ticket: {report['ticket'] or 'none (no pruned round matched the dense network)'}")
    return 0
