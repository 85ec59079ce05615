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
import json

from ..structured.plan import UNITS
from ..structured.run import BLOCK_SCORES, DEFAULT_DAMP, DEFAULT_MULTIPLE_OF, DEFAULT_SCORE, DEFAULT_UNITS
from ..structured.scores import SCORES
from .evaluate import add_eval_arguments

HELP = "structured pruning to a smaller dense model (MLP channels, heads, blocks)"
EPILOG = """examples:
  llmprune shrink --model llama --ratio 0.25 --nsamples 32 --seqlen 512 --eval-ppl --eval-windows 64 --output out/llama-shrink-25
  llmprune shrink --model llama --ratio 0.25 --units mlp,heads --score obs --output out/s      # slower greedy choice
  llmprune shrink --model Qwen/Qwen3-0.6B --ratio 0.2 --units mlp --multiple-of 256 --output out/q3   # GGUF k-quant friendly

scores: magnitude (weights only), wanda (Wanda-sp), fluctuation (FLAP), hessian (||W_j||^2 H_jj, default),
obs (greedy optimal brain surgeon on H). Default: hessian. Blocks: angular (ShortGPT block influence) or
span (the contiguous run of blocks whose input and output are closest in angle).
--multiple-of: llama.cpp's k-quants need widths in multiples of 256; a small model needs finer steps
to reach a ratio closely. The report (llmprune_report.json) lists the removed units of every block.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to remove")
    what.add_argument("--model", default="llama", help="alias, model folder, .gguf file or hub id (default: llama)")
    what.add_argument("--ratio", type=float, required=True, help="fraction of the decoder blocks' parameters to remove, in (0, 1)")
    what.add_argument("--units", default=DEFAULT_UNITS, help=f"comma-separated mix of {', '.join(UNITS)}, or auto: mlp,heads where the family's heads are removable, else mlp (default: {DEFAULT_UNITS})")
    what.add_argument("--score", default=DEFAULT_SCORE, choices=SCORES, help=f"how channels and heads are ranked (default: {DEFAULT_SCORE})")
    what.add_argument("--block-score", default="angular", choices=BLOCK_SCORES, help="how blocks are ranked (default: angular)")
    what.add_argument("--multiple-of", type=int, default=DEFAULT_MULTIPLE_OF, help=f"MLP widths are multiples of this (default: {DEFAULT_MULTIPLE_OF}; 256 for llama.cpp k-quants)")
    what.add_argument("--no-compensate", dest="compensate", action="store_false", help="do not re-fit the consumers' kept columns by least squares")
    what.add_argument("--damp", type=float, default=DEFAULT_DAMP, help=f"least-squares damping, a fraction of the Hessian's mean diagonal (default: {DEFAULT_DAMP})")
    what.add_argument("--reconstruct", action="store_true", help="heal each block by reconstruction afterwards (not available yet)")
    data = parser.add_argument_group("calibration")
    data.add_argument("--calibration", default="wikipedia", help="wikipedia (default), a .txt/.jsonl/.json file, or a hub dataset")
    data.add_argument("--nsamples", type=int, default=128, help="calibration windows (default: 128)")
    data.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default: 2048, capped at the model's limit)")
    data.add_argument("--seed", type=int, default=0, help="seed for the window offsets (default: 0)")
    data.add_argument("--batch-size", type=int, help="windows per forward chunk (default: all at once when they fit in memory)")
    run = parser.add_argument_group("hardware")
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: float32 on CPU, bfloat16 on GPU)")
    run.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    out = parser.add_argument_group("output and evaluation")
    out.add_argument("--output", help="folder for the shrunk model and llmprune_report.json")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    out.add_argument("--report", help="also write the report JSON here")
    out.add_argument("--eval-ppl", action="store_true", help="perplexity on the bundled Wikipedia test split before and after")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_eval_arguments(parser, prune_command=True)


def print_summary(report: dict) -> None:
    params = report["parameters"]
    print(
        f"\nshrunk {report['model']} ({','.join(report['units'])}, {report['score']}): removed "
        f"{report['ratio_reached']:.1%} of the blocks' parameters; parameters {params['before']:,} -> {params['after']:,}; "
        f"kept {report['kept']}; {report['shrink_seconds']:.1f} s, peak memory {report['peak_rss_mb']:.0f} MiB"
    )
    if report["removed_blocks"]:
        print(f"removed blocks: {report['removed_blocks']}")
    evaluation = report.get("eval", {})
    if "ppl_before" in evaluation:
        print(f"wikipedia test perplexity: {evaluation['ppl_before']:.2f} -> {evaluation['ppl_after']:.2f}")
    if "results" in evaluation:
        from ..evaluate import format_table

        print("\nafter shrinking:\n" + format_table(evaluation["results"]))
    if report.get("output"):
        print(f"saved to {report['output']}")


def run(args: argparse.Namespace) -> int:
    from ..api import run_shrink

    options = {key: value for key, value in vars(args).items() if not key.startswith("_")}
    options["report_path"] = options.pop("report")
    report = run_shrink(**options)
    print_summary(report)
    if not report.get("output") and not args.report:
        print(json.dumps({k: v for k, v in report.items() if k != "blocks"}, indent=2))
    return 0
