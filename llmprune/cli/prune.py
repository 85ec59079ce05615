"""Prune a causal language model one decoder block at a time, and save it.

Calibration text flows through the model block by block; each linear layer inside the
blocks is pruned from the statistics its inputs produce (Wanda: input norms; SparseGPT:
the layer Hessian; magnitude needs none). Embeddings, norms and lm_head are never pruned.
"""
from __future__ import annotations

import argparse

from ..options import RunOptions
from .dataclass_flags import add_dataclass_arguments, options_from_args
from .summary import print_report_if_unkept, print_results_and_output, reconstruction_line

HELP = "prune a model (the default command)"
EPILOG = """examples:
  llmprune --model llama --method wanda --sparsity 0.5 --eval-ppl --output out/llama-wanda-50
  llmprune --model llama --method sparsegpt --pattern 2:4 --nsamples 32 --seqlen 512 --output out/sgpt-24
  llmprune --model Qwen/Qwen3-0.6B --method wanda --pattern 4:8 --ignore 'mlp.down_proj' --output out/q3
  llmprune --config configs/llama-wanda-50.yaml --output out/recipe
  llmprune --model llama --pattern 2:4 --ppl wikipedia --tasks wiki_next,wiki_lastword --output out/l24

models: an alias (llama = smollm2-135m, the bundled SmolLM2-135M-Instruct), a local model
folder, a .gguf file, or a Hugging Face hub id (needs the network or a cached copy).
calibration: 'wikipedia' (bundled, train split), a .txt / .jsonl / .json file, or a hub dataset
name (name or name:config). The report is written as llmprune_report.json in the output folder.
"""


NOT_FLAGS = ("method_options",)  # YAML recipes and Python only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``RunOptions`` field: its name, type, help and default come from the dataclass."""
    add_dataclass_arguments(parser, RunOptions, first=("model",), skip=NOT_FLAGS)


def print_summary(report: dict) -> None:
    pattern = report["pattern"] or f"{report['target_sparsity']:.0%}"
    share = report["coverage"]["pruned_share_of_block_matrices"]
    print(
        f"\npruned {report['model']} with {report['method']} ({pattern}): "
        f"{report['total_sparsity']:.2%} of {len(report['layers'])} layers' weights are zero "
        f"({share:.1%} of the blocks' matrix parameters), "
        f"{report['prune_seconds']:.1f} s, peak memory {report['peak_rss_mb']:.0f} MiB"
        + (f", peak GPU memory {report['peak_gpu_mb']:.0f} MiB" if report.get("peak_gpu_mb") is not None else "")
    )
    healed = reconstruction_line(report.get("reconstruct"))
    if healed:
        print(healed)
    ppl = report.get("eval", {})
    if "ppl_before" in ppl:
        print(f"\n{'wikipedia test perplexity':<28}{'before':>10}{'after':>10}")
        print(f"{'':<28}{ppl['ppl_before']:>10.2f}{ppl['ppl_after']:>10.2f}")
    if report.get("owl"):
        spread = report["owl"]["block_sparsity"]
        print(f"OWL block sparsities: {min(spread):.1%} .. {max(spread):.1%} (lambda {report['owl']['lambda']})")
    print_results_and_output(ppl, "pruning", report.get("output"))


def run(args: argparse.Namespace) -> int:
    from ..api import run_prune

    report = run_prune(options_from_args(RunOptions, args))
    print_summary(report)
    print_report_if_unkept(report, args.report, "layers")
    return 0
