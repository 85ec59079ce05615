"""What pruning costs against a plain forward pass, and how the cost grows with the model (135M vs 1.5B).

    python eval/bench_scale.py --models llama,qwen-coder --methods wanda,sparsegpt --nsamples 32 --seqlen 512

For each model, in one run, each step a separate process with the same threads and dtype:
1. a plain forward pass of the calibration batch (the same windows the CLI draws: --calibration train
   split, seed 0, the CLI's own chunking), through the decoder stack only (embeddings, blocks, final norm;
   no lm_head: pruning never computes logits), timed after loading;
2. the CLI itself for each method (``llmprune --model M --method X --sparsity 0.5 ... --report R``), its
   ``prune_seconds`` and ``peak_rss_mb`` read from the report it writes;
3. the forward pass again (the machine is shared: the two forwards bracket the prunes; the ratio uses
   their mean, and both are shown).
The cost-growth table gives seconds per (parameter x calibration token) and the peak memory beyond the
model's own bytes in the run dtype. Writes eval/results/scale.{md,json} (or --output).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmprune.process import cpu_name  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def forward_worker(args: argparse.Namespace) -> dict:
    """One plain forward pass of the calibration batch, chunked as the CLI chunks it."""
    import torch

    from llmprune.calibration import calibration_chunks
    from llmprune.io.loading import load_causal_lm
    from llmprune.process import peak_rss_mb

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer, _ = load_causal_lm(args.model, dtype=args.dtype, device="cpu")
    load_seconds = time.perf_counter() - started
    chunks, nsamples, seqlen = calibration_chunks(model, tokenizer, args.calibration, args.nsamples, args.seqlen, 0, None)
    decoder = model.get_decoder()
    started = time.perf_counter()
    with torch.inference_mode():
        for chunk in chunks:
            decoder(input_ids=chunk, use_cache=False)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"forward_seconds": seconds, "load_seconds": load_seconds, "chunks": len(chunks), "tokens": nsamples * seqlen,
            "params": params, "model_bytes": model_bytes, "peak_rss_mb": peak_rss_mb()}


def run_json(command: list[str], env: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return done, time.perf_counter() - started


def forward(args: argparse.Namespace, model: str, env: dict) -> dict:
    command = [sys.executable, __file__, "--worker", "--models", model, "--dtype", args.dtype, "--threads", str(args.threads),
               "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--calibration", args.calibration]
    done, _ = run_json(command, env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def prune(args: argparse.Namespace, model: str, method: str, env: dict, folder: Path) -> dict:
    report = folder / f"{model}-{method}.json"
    command = [sys.executable, "-c", "import sys; from llmprune.cli import main; sys.exit(main())", "--model", model, "--method", method, "--sparsity", "0.5",
               "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--dtype", args.dtype,
               "--calibration", args.calibration, "--report", str(report), "--no-progress"]
    _, wall = run_json(command, env)
    data = json.loads(report.read_text())
    return {"prune_seconds": data["prune_seconds"], "peak_rss_mb": data["peak_rss_mb"], "wall_seconds": wall,
            "command": "llmprune " + " ".join(command[3:-2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama,qwen-coder")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calibration", default="code")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "scale"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model = args.models
        print(json.dumps(forward_worker(args)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            first = forward(args, model, env)
            print(f"{model}: forward {first['forward_seconds']:.1f} s", flush=True)
            prunes = {}
            for method in args.methods.split(","):
                prunes[method] = prune(args, model, method, env, Path(tmp))
                print(f"{model}: {method} {prunes[method]['prune_seconds']:.1f} s, peak {prunes[method]['peak_rss_mb']:.0f} MiB", flush=True)
            second = forward(args, model, env)
            mean = (first["forward_seconds"] + second["forward_seconds"]) / 2
            for method, result in prunes.items():
                rows.append({
                    "model": model, "method": method, "params": first["params"], "tokens": first["tokens"],
                    "model_mib": first["model_bytes"] / 2**20, "forward_seconds": [first["forward_seconds"], second["forward_seconds"]],
                    "ratio": result["prune_seconds"] / mean,
                    "seconds_per_param_token": result["prune_seconds"] / (first["params"] * first["tokens"]),
                    "beyond_model_mib": result["peak_rss_mb"] - first["model_bytes"] / 2**20,
                    **result,
                })
    settings = {"nsamples": args.nsamples, "seqlen": args.seqlen, "dtype": args.dtype, "threads": args.threads,
                "calibration": args.calibration, "cpu": cpu_name(), "note": "shared machine (other jobs running beside)"}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    Path(args.output + ".md").write_text(markdown(rows, settings))
    print(markdown(rows, settings))


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [
        "# Pruning cost against a plain forward pass, 135M vs 1.5B",
        "",
        f"`python eval/bench_scale.py` with {settings['nsamples']} x {settings['seqlen']} calibration tokens "
        f"({settings['calibration']}), {settings['dtype']}, {settings['threads']} threads, {settings['cpu']}; "
        f"{settings['note']}. Forward: the decoder stack over the calibration batch, before and after the prunes.",
        "",
        "| model | method | params | prune s | forward s (before, after) | prune / forward | s per param x token | peak MiB | model MiB | beyond the model MiB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['params'] / 1e6:.0f}M | {r['prune_seconds']:.1f} | "
            f"{r['forward_seconds'][0]:.1f}, {r['forward_seconds'][1]:.1f} | {r['ratio']:.2f} | {r['seconds_per_param_token']:.2e} | "
            f"{r['peak_rss_mb']:.0f} | {r['model_mib']:.0f} | {r['beyond_model_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
