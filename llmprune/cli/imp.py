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
from dataclasses import fields
from pathlib import Path

from ..errors import LLMPruneError

HELP = "lottery tickets for BERT: iterative magnitude pruning with rewinding, and baselines"
EPILOG = """examples:
  llmprune imp --model minilm --task rt-polarity --max-train-samples 3000 --rounds 5 --output runs/rt
  llmprune imp --config configs/imp-rt-polarity.yaml --seeds 3 --baselines all
  llmprune imp --model bert-base-uncased --task sst2 --schedule geometric --rate 0.2 --target-sparsity 0.8
"""

# option defaults live here rather than in argparse so that a --config file can sit between
# them and the flags actually typed (flags win over the file, the file over these)
DEFAULTS = {
    "model": "minilm", "task": None, "output": None, "eval_file": None, "schedule": "linear",
    "rounds": None, "target_sparsity": None, "rate": None, "rewind": "pretrained", "seeds": 1, "seed": 0,
    "baselines": "none", "baseline_min_sparsity": 0.0, "epochs": 1.0, "lr": 2e-5, "batch_size": 32, "max_length": 128,
    "max_train_samples": None, "max_eval_samples": None, "weight_decay": 0.0, "precision": "no",
    "device": "auto", "no_progress": False, "overwrite": False,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", help="YAML file whose keys are these option names (e.g. max-train-samples: 3000); flags override it")
    a("--model", help="BERT-family encoder: a folder, a hub id, or the alias bert/minilm (default minilm)")
    a("--task", help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte (GLUE, needs the network or a cache), "
                     "rt-polarity, wiki-topic (offline), or a .csv/.jsonl file with text and label columns")
    a("--eval-file", help="validation file for a .csv/.jsonl task (default: a fixed tenth of the task file)")
    a("--output", help="run folder: state, reports and the ticket (default imp-<task>)")
    a("--schedule", choices=["linear", "geometric"], help="linear: 10%% of the original weights more per round; "
                                                           "geometric: --rate of the remaining per round")
    a("--rounds", type=int, help="pruning rounds after the dense one (linear default: up to 90%%)")
    a("--target-sparsity", type=float, help="final sparsity; an error if --rounds cannot reach it")
    a("--rate", type=float, help="fraction pruned per round (linear: of the original, default 0.1; geometric: "
                                 "of the remaining, default 0.2)")
    a("--rewind", help="pretrained (default) or step:K, late rewinding to the weights after K fine-tuning steps")
    a("--seeds", type=int, help="repeat everything with this many seeds (default 1)")
    a("--seed", type=int, help="first seed (default 0)")
    a("--baselines", help="comma list of random-prune, random-reinit, one-shot; or all / none (default none)")
    a("--baseline-min-sparsity", type=float, help="run the baselines only at levels of at least this sparsity "
                                                   "(default 0: at every level)")
    a("--epochs", type=float, help="fine-tuning epochs per round (default 1)")
    a("--lr", type=float, help="learning rate (default 2e-5)")
    a("--batch-size", type=int, help="batch size (default 32)")
    a("--max-length", type=int, help="tokens per example, longer ones truncated (default 128)")
    a("--max-train-samples", type=int, help="train on a fixed subset of this many examples")
    a("--max-eval-samples", type=int, help="evaluate on a fixed subset of this many examples")
    a("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    a("--precision", choices=["no", "bf16", "fp16"], help="mixed precision through accelerate (default no; "
                                                          "bf16 is about 4x faster on CPUs with AMX)")
    a("--device", help="auto (default), cpu or cuda")
    a("--no-progress", action="store_true", default=None, help="no progress bars")
    a("--overwrite", action="store_true", default=None, help="delete an existing run in --output and start again")


def load_config_file(path: str) -> dict:
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise LLMPruneError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise LLMPruneError(f"cannot parse {file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LLMPruneError(f"{file} must hold option: value pairs")
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise LLMPruneError(f"{file}: unknown option(s) {', '.join(unknown)}")
    return options


def merged_options(args: argparse.Namespace) -> dict:
    options = dict(DEFAULTS)
    if getattr(args, "config", None):
        options.update(load_config_file(args.config))
    options.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if not options["task"]:
        raise LLMPruneError("--task is required (on the command line or in the --config file)")
    return options


def parse_baselines(value) -> list[str]:
    from ..imp.runner import BASELINES, check_baselines

    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
    else:
        names = [v.strip() for v in str(value).split(",") if v.strip()]
    if names in (["all"],):
        return list(BASELINES)
    if names in (["none"], []):
        return []
    return check_baselines(names)


def to_config(options: dict):
    from ..imp.runner import IMPConfig

    task_stem = Path(str(options["task"])).stem if str(options["task"]).endswith((".csv", ".jsonl")) else options["task"]
    values = dict(options)
    values["output"] = values["output"] or f"imp-{task_stem}"
    values["baselines"] = parse_baselines(values["baselines"])
    values["progress"] = not values.pop("no_progress")
    names = {f.name for f in fields(IMPConfig)}
    return IMPConfig(**{k: v for k, v in values.items() if k in names})


def run(args: argparse.Namespace) -> int:
    from ..imp.runner import run_imp

    config = to_config(merged_options(args))
    report = run_imp(config)
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
