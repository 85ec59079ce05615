"""Prune a causal language model one decoder block at a time, and save it.

Calibration text flows through the model block by block; each linear layer inside the
blocks is pruned from the statistics its inputs produce (Wanda: input norms; SparseGPT:
the layer Hessian; magnitude needs none). Embeddings, norms and lm_head are never pruned.
"""
from __future__ import annotations

import argparse
import json

from ..config import PruneConfig
from .evaluate import add_eval_arguments
from ..methods import METHODS

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


def _patterns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to prune")
    what.add_argument("--config", help="YAML recipe (keys are these option names); flags given here override it")
    what.add_argument("--model", help="alias, model folder, .gguf file or hub id (default: llama)")
    what.add_argument("--method", help=f"pruning method: {', '.join(METHODS)} (default: wanda)")
    what.add_argument("--sparsity", type=float, help="fraction of weights to remove in [0, 1) (default: 0.5)")
    what.add_argument("--pattern", help="N:M semi-structured sparsity instead, e.g. 2:4 or 4:8")
    what.add_argument("--targets", type=_patterns, help="comma-separated layer names/globs to prune (default: every linear layer in the blocks)")
    what.add_argument("--ignore", type=_patterns, help="comma-separated layer names/globs to leave alone, e.g. 'mlp.down_proj' or 're:.*\\.0\\..*'")
    what.add_argument("--owl", action="store_true", default=None, help="OWL: per-block sparsities from outlier ratios, mean = --sparsity (unstructured only)")
    what.add_argument("--owl-m", type=float, help="OWL: a score above M x the block's mean is an outlier (default: 5)")
    what.add_argument("--owl-lambda", type=float, help="OWL: block sparsities stay within sparsity +- lambda (default: 0.08)")
    data = parser.add_argument_group("calibration")
    data.add_argument("--calibration", help="wikipedia (default), a .txt/.jsonl/.json file, or a hub dataset")
    data.add_argument("--nsamples", type=int, help="calibration windows (default: 128)")
    data.add_argument("--seqlen", type=int, help="tokens per window (default: 2048, capped at the model's limit)")
    data.add_argument("--seed", type=int, help="seed for the window offsets (default: 0)")
    data.add_argument("--batch-size", type=int, help="windows per forward chunk (default: all at once when they fit in memory)")
    run = parser.add_argument_group("hardware")
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: float32 on CPU, bfloat16 on GPU)")
    run.add_argument("--stream", action="store_true", default=None, help="stream the model from its safetensors one block at a time (automatic when it does not fit in memory)")
    run.add_argument("--device", help="cpu, cuda or auto (default: auto); only the block being pruned sits on it")
    out = parser.add_argument_group("output and evaluation")
    out.add_argument("--output", help="folder for the pruned model and llmprune_report.json")
    out.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output folder")
    out.add_argument("--save-format", choices=["dense", "sparse"], help="dense safetensors (loads anywhere; default) or compressed sparse")
    out.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the output folder to the Hugging Face Hub afterwards")
    out.add_argument("--report", help="also write the report JSON here (the only output when --output is not given)")
    out.add_argument("--eval-ppl", action="store_true", default=None, help="perplexity on the bundled Wikipedia test split before and after")
    out.add_argument("--eval-seqlen", type=int, help="perplexity window length (default: 512)")
    out.add_argument("--eval-windows", type=int, help="at most this many perplexity windows (default: all)")
    out.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    add_eval_arguments(parser, prune_command=True)


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and not key.startswith("_") and key != "config"
    }
    if args.config:
        return PruneConfig.from_yaml(args.config, **given)
    return PruneConfig(**given)


def print_summary(report: dict) -> None:
    pattern = report["pattern"] or f"{report['target_sparsity']:.0%}"
    print(
        f"\npruned {report['model']} with {report['method']} ({pattern}): "
        f"{report['total_sparsity']:.2%} of {len(report['layers'])} layers' weights are zero, "
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

    report = run_prune(config_from_args(args))
    print_summary(report)
    if not report.get("output") and not args.report:
        print(json.dumps({k: v for k, v in report.items() if k != "layers"}, indent=2))
    return 0
