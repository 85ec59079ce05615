"""Structured pruning: remove whole MLP channels, attention heads or blocks, so the model really gets
smaller and faster on every runtime, and save it as a stock Hugging Face folder.

A fraction --ratio of the decoder blocks' parameters is removed (embeddings and lm_head stay). Widths
are the same in every block, so the output config uses only standard keys (intermediate_size,
num_attention_heads, num_key_value_heads, head_dim, num_hidden_layers, layer_types) and loads with
AutoModelForCausalLM.from_pretrained, no custom code. Blocks are shrunk one after another on the
calibration activations of the already shrunk model; the layer reading the removed units is re-fitted
by least squares on its calibration inputs.
"""
from __future__ import annotations

import argparse

from ..structured.options import ShrinkRunOptions
from .dataclass_flags import add_dataclass_arguments, options_from_args
from .summary import print_report_if_unkept, print_results_and_output, reconstruction_line

HELP = "structured pruning to a smaller dense model (MLP channels, heads, blocks)"
EPILOG = """examples:
  llmprune shrink --model llama --ratio 0.25 --nsamples 128 --seqlen 512 --eval-ppl --eval-windows 64 --output out/llama-shrink-25
  llmprune shrink --model llama --ratio 0.25 --nsamples 128 --seqlen 512 --distill-steps 84 --output out/healed   # + distillation
  llmprune shrink --model llama --ratio 0.25 --units mlp,heads --score hessian --output out/s   # no blocks, fastest score
  llmprune shrink --model Qwen/Qwen3-0.6B --ratio 0.2 --units mlp --multiple-of 256 --output out/q3   # GGUF k-quant friendly

The default mix (auto) removes MLP channels and whole blocks; each removed run of blocks is replaced by
a least-squares linear bridge folded into the kept block before it (--no-block-correction turns it off).
The consumers' kept columns (down_proj, o_proj) are re-fitted by least squares on their calibration
inputs; --reconstruct then trains every kept weight of each block towards the dense block's outputs, and
--distill-steps trains the whole model towards the dense model's next-token distributions.
--multiple-of: llama.cpp's k-quants need widths in multiples of 256; a small model needs finer steps
to reach a ratio closely. The report (llmprune_report.json) lists the removed units of every block and,
with --reconstruct, each block's held-out output error before and after training.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``ShrinkRunOptions`` field: its name, type, help and default come from the dataclass."""
    add_dataclass_arguments(parser, ShrinkRunOptions, first=("model", "ratio"))


def print_summary(report: dict) -> None:
    params = report["parameters"]
    print(
        f"\nshrunk {report['model']} ({','.join(report['units'])}, {report['score']}): removed "
        f"{report['ratio_reached']:.1%} of the blocks' parameters (asked {report['ratio']:.1%}); parameters {params['before']:,} -> {params['after']:,}; "
        f"kept {report['kept']}; {report['shrink_seconds']:.1f} s, peak memory {report['peak_rss_mb']:.0f} MiB"
        + (f", peak GPU memory {report['peak_gpu_mb']:.0f} MiB" if report.get("peak_gpu_mb") is not None else "")
    )
    if report["removed_blocks"]:
        print(f"removed blocks: {report['removed_blocks']}")
    healed = reconstruction_line(report.get("reconstruct"))
    if healed:
        print(healed)
    bridges = report.get("block_correction")
    if isinstance(bridges, list):
        print("block bridges (calibration error of each removed run): " + ", ".join(
            f"{run['blocks']} {run['error_before']:.4g} -> {run['error_after']:.4g}" if "error_before" in run
            else f"{run['blocks']} none ({run['skipped']})" for run in bridges))
    distilled = report.get("distill")
    if distilled and distilled.get("held_out_kl_before") is not None:
        print(f"distillation: held-out KL to the dense model {distilled['held_out_kl_before']:.4g} -> "
              f"{distilled['held_out_kl_after']:.4g} ({distilled['steps']} steps, {distilled['seconds']:.1f} s)")
    evaluation = report.get("eval", {})
    if "ppl_before" in evaluation:
        print(f"wikipedia test perplexity: {evaluation['ppl_before']:.2f} -> {evaluation['ppl_after']:.2f}")
    print_results_and_output(evaluation, "shrinking", report.get("output"))


def run(args: argparse.Namespace) -> int:
    from ..api import run_shrink

    options = options_from_args(ShrinkRunOptions, args)
    report = run_shrink(options)
    print_summary(report)
    print_report_if_unkept(report, options.report, "blocks")
    return 0
