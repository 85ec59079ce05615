"""Pruning a mixture-of-experts model against the dense-FFN model of the same size (issue 11).

Two random models with realistic proportions, built from configs (no download): a Qwen3-MoE with 16
experts of width 512 (2 per token) on hidden size 1024, 4 blocks; and a Qwen3 whose FFN has the same
parameters (width 16 x 512 = 8192), everything else equal. Each (model, method) runs in its own
process so the peak resident memory (VmHWM) is its own; calibration is random token ids.

    .venv/bin/python eval/bench_moe.py                          # 8 x 256 calibration tokens
    .venv/bin/python eval/bench_moe.py --nsamples 16 --seqlen 512
Writes eval/results/moe.md and .json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHAPE = dict(hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
             vocab_size=8192, max_position_embeddings=4096, tie_word_embeddings=True)
EXPERTS, EXPERT_WIDTH, TOP_K = 16, 512, 2


def build(kind: str):
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "moe":
        config = transformers.Qwen3MoeConfig(**SHAPE, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
                                             moe_intermediate_size=EXPERT_WIDTH, intermediate_size=EXPERTS * EXPERT_WIDTH)
    else:
        config = transformers.Qwen3Config(**SHAPE, intermediate_size=EXPERTS * EXPERT_WIDTH)
    config.use_cache = False
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def prune_one(job: str, nsamples: int, seqlen: int) -> dict:
    """One (model, method) run; called in a fresh process, so the peak memory is this run's own."""
    import torch

    import llmprune
    from llmprune.process import peak_rss_mb

    torch.set_num_threads(1)
    kind, method = job.split(":")
    model = build(kind)
    ids = torch.randint(0, SHAPE["vocab_size"], (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    before = peak_rss_mb()
    report = llmprune.prune(model, None, method=method, sparsity=0.5, calibration_ids=ids, progress=False)
    return {
        "model": kind, "method": method,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
        "prune_seconds": report["prune_seconds"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_prune_mb": round(before, 1),
        "total_sparsity": round(report["total_sparsity"], 4),
        "pruned_share_of_block_matrices": round(report["coverage"]["pruned_share_of_block_matrices"], 4),
        "experts_fell_back": (report.get("experts") or {}).get("experts_fell_back"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    args = parser.parse_args()
    rows = []
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per run, not a fork of this one
    for job in ("moe:wanda", "dense:wanda", "moe:sparsegpt", "dense:sparsegpt"):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            rows.append(pool.submit(prune_one, job, args.nsamples, args.seqlen).result())
        print(rows[-1], flush=True)
    setting = (f"{args.nsamples} x {args.seqlen} random calibration tokens, float32, CPU; MoE: {EXPERTS} experts of width "
               f"{EXPERT_WIDTH}, {TOP_K} per token; dense: FFN width {EXPERTS * EXPERT_WIDTH}; hidden 1024, 4 blocks")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "moe.json").write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")
    lines = ["# MoE vs dense FFN of the same size: prune time and peak memory\n", f"Setting: {setting}.\n",
             f"Command: `.venv/bin/python eval/bench_moe.py --nsamples {args.nsamples} --seqlen {args.seqlen}`\n",
             "| model | method | parameters | model MiB | prune s | peak RSS MiB | RSS before pruning MiB | sparsity | experts fell back |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['parameters']:,} | {r['model_mb']} | {r['prune_seconds']} | "
                     f"{r['peak_rss_mb']} | {r['rss_before_prune_mb']} | {r['total_sparsity']} | {r['experts_fell_back']} |")
    (RESULTS / "moe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
