"""Prune a causal language model one decoder block at a time, and save it.

Calibration text flows through the model block by block; each linear layer inside the
blocks is pruned from the statistics its inputs produce (Wanda: input norms; SparseGPT:
the layer Hessian; magnitude needs none). Embeddings, norms and lm_head are never pruned.
"""
from __future__ import annotations

import argparse
import json

from dataclasses import fields

from ..options import RunOptions, defaults as option_defaults

HELP = "prune a model (the default command)"
EPILOG = """examples:
  llmprune --model llama --method wanda --sparsity 0.5 --eval-ppl --output out/llama-wanda-50
  llmprune --model llama --method sparsegpt --pattern 2:4 --nsamples 32 --seqlen 512 --output out/sgpt-24
  llmprune --model Qwen/Qwen3-0.6B --method wanda --pattern 4:8 --ignore 'mlp.down_proj' --output out/q3
  llmprune --config configs/llama-wanda-50.yaml --output out/recipe
  llmprune --model llama --pattern 2:4 --ppl wikipedia --tasks rt_sentiment,wiki_topic --output out/l24

models: an alias (llama = smollm2-135m, the bundled SmolLM2-135M-Instruct), a local model
folder, a .gguf file, or a Hugging Face hub id (needs the network or a cached copy).
calibration: 'wikipedia' (bundled, train split), a .txt / .jsonl / .json file, or a hub dataset
name (name or name:config). The report is written as llmprune_report.json in the output folder.
"""


def _patterns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# Flags whose spelling differs from the option's name.
FLAG_NAMES = {"progress": "--no-progress"}
NOT_FLAGS = ("method_options",)  # YAML recipes and Python only


def _flag_type(annotation: str):
    if "list" in annotation:
        return _patterns
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``RunOptions`` field: its name, type, help and default come from the dataclass.

    Every flag defaults to None here ("not given"), so a YAML recipe's value stands unless a flag
    replaces it; the defaults shown are the dataclass's, the only place they are set.
    """
    parser.add_argument("--config", help="YAML recipe (keys are these option names); flags given here override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = option_defaults(RunOptions)
    for f in sorted(fields(RunOptions), key=lambda f: f.name != "model"):  # --model first
        if f.name in NOT_FLAGS:
            continue
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        default = defaults[f.name]
        help_text = meta["help"]
        if isinstance(default, bool):
            if default:  # a switch that turns a default-on option off
                group.add_argument(flag, dest=f.name, action="store_false", default=None, help=f"{help_text}: hide them")
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
            continue
        if default is not None and "(default" not in help_text:
            help_text += f" (default: {default})"
        group.add_argument(flag, dest=f.name, type=_flag_type(str(f.type)), default=None, help=help_text, **meta["flag"])


def options_from_args(args: argparse.Namespace) -> RunOptions:
    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and not key.startswith("_") and key != "config"
    }
    if args.config:
        return RunOptions.from_yaml(args.config, **given)
    return RunOptions(**given)


def print_summary(report: dict) -> None:
    pattern = report["pattern"] or f"{report['target_sparsity']:.0%}"
    share = report["coverage"]["pruned_share_of_block_matrices"]
    print(
        f"\npruned {report['model']} with {report['method']} ({pattern}): "
        f"{report['total_sparsity']:.2%} of {len(report['layers'])} layers' weights are zero "
        f"({share:.1%} of the blocks' matrix parameters), "
        f"{report['prune_seconds']:.1f} s, peak memory {report['peak_rss_mb']:.0f} MiB"
    )
    ppl = report.get("eval", {})
    if "ppl_before" in ppl:
        print(f"\n{'wikipedia test perplexity':<28}{'before':>10}{'after':>10}")
        print(f"{'':<28}{ppl['ppl_before']:>10.2f}{ppl['ppl_after']:>10.2f}")
    if report.get("owl"):
        spread = report["owl"]["block_sparsity"]
        print(f"OWL block sparsities: {min(spread):.1%} .. {max(spread):.1%} (lambda {report['owl']['lambda']})")
    if "results" in ppl:
        from ..evaluate import format_table

        print("\nafter pruning:\n" + format_table(ppl["results"]))
    if report.get("output"):
        print(f"\nsaved to {report['output']}")


def run(args: argparse.Namespace) -> int:
    from ..api import run_prune

    report = run_prune(options_from_args(args))
    print_summary(report)
    if not report.get("output") and not args.report:
        print(json.dumps({k: v for k, v in report.items() if k != "layers"}, indent=2))
    return 0
