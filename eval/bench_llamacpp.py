"""Does a shrunk model run faster where small models are run? Dense against shrunk GGUF files in llama.cpp.

    python eval/bench_llamacpp.py --model dense=llama --model shrunk=out/llama-shrink-25 \
        --types f16,q8_0,q4_k_m --threads 1 --repeats 5 --ppl-windows 64 --output eval/results/llamacpp

Each ``--model LABEL=FOLDER`` (a folder llmprune wrote, or a bundled alias) is written as a GGUF file of each
``--types`` entry with ``llmprune.io.gguf_export.export_gguf`` (the K-quants by llama.cpp's own quantizer)
and loaded by llama-cpp-python. Measured, at batch 1 and a fixed thread count, the files in turn within each
repeat (interleaved, so a busy machine slows every file alike): prefill tokens/s (one ``eval`` of
``--prefill-len`` tokens) and decode tokens/s (``--decode-tokens`` single-token evals after it, fed the
text's next tokens so every file does the same work); the median over repeats is reported. Perplexity:
the bundled Wikipedia test windows (llmprune's protocol: 512-token non-overlapping windows), the same
token ids for every file, from llama.cpp's own logits (``logits_all=True``); and, for the f16 files, the
same windows through transformers on the folder (float32), the reference the llama.cpp figure should
match within 1%. Writes OUTPUT.md and OUTPUT.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmprune.io.gguf_export import export_gguf, parse_gguf_type  # noqa: E402
from llmprune.process import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_models(items: list[str]) -> dict[str, str]:
    models = {}
    for item in items:
        label, _, spec = item.partition("=")
        if not spec:
            raise SystemExit(f"--model takes LABEL=FOLDER, got {item!r}")
        models[label] = spec
    return models


def gguf_files(models: dict[str, str], types: list[str], workdir: Path, source: str | None = None) -> list[dict]:
    """One GGUF file per (model, type), written once into ``workdir`` and reused by later runs."""
    entries = []
    for label, spec in models.items():
        for name in types:
            kind = parse_gguf_type(name)
            path = workdir / f"{label}-{kind.name}.gguf"
            seconds = None
            if not path.is_file():
                started = time.perf_counter()
                export_gguf(spec, path, name, source=source)
                seconds = time.perf_counter() - started
            entries.append({"label": label, "model": spec, "type": kind.name, "path": str(path),
                            "bytes": path.stat().st_size, "export_seconds": seconds})
    return entries


def open_llama(path: str, n_ctx: int, threads: int, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False)


def time_once(llm, prompt: list[int], follow: list[int]) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one pass: the prompt in one eval, then one token per eval."""
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for token in follow:
        llm.eval([token])
    decode = time.perf_counter() - started
    return len(prompt) / prefill, len(follow) / decode


def measure_speed(entries: list[dict], prompt: list[int], follow: list[int], threads: int, repeats: int) -> None:
    models = {entry["path"]: open_llama(entry["path"], len(prompt) + len(follow) + 8, threads) for entry in entries}
    for llm in models.values():  # warm-up: first touches of the weights, thread pools
        time_once(llm, prompt[:32], follow[:4])
    runs: dict[str, list[tuple[float, float]]] = {entry["path"]: [] for entry in entries}
    for _ in range(repeats):
        for entry in entries:  # interleaved: every file sees the same stretch of machine load
            runs[entry["path"]].append(time_once(models[entry["path"]], prompt, follow))
    for entry in entries:
        prefill = [p for p, _ in runs[entry["path"]]]
        decode = [d for _, d in runs[entry["path"]]]
        entry.update(prefill_tps=statistics.median(prefill), decode_tps=statistics.median(decode),
                     prefill_runs=prefill, decode_runs=decode)
    for llm in models.values():
        llm.close()


def window_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over positions (the same float32 log-softmax as llmprune's perplexity)."""
    import torch

    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1)
    return -float(log_probs[torch.arange(len(targets)), torch.from_numpy(targets)].double().sum())


def llama_cpp_ppl(path: str, windows: np.ndarray, threads: int) -> dict:
    llm = open_llama(path, windows.shape[1], threads, logits_all=True)
    total, count = 0.0, 0
    started = time.perf_counter()
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        logits = np.asarray(llm.scores[: len(window) - 1])
        total += window_nll(logits, window[1:].astype(np.int64))
        count += len(window) - 1
    llm.close()
    return {"ppl": float(np.exp(total / count)), "predicted": count, "seconds": time.perf_counter() - started}


def transformers_ppl(spec: str, seqlen: int, windows: int) -> dict:
    import torch

    from llmprune.evaluate.perplexity import perplexity
    from llmprune.io.loading import load_causal_lm

    torch.set_num_threads(2)
    model, tokenizer, _ = load_causal_lm(spec, dtype="float32", device="cpu")
    result = perplexity(model, tokenizer, source="wikipedia", split="test", seqlen=seqlen, max_windows=windows, progress=False)
    return {"ppl": result.ppl, "predicted": result.predicted, "seconds": result.seconds}


def test_windows(spec: str, seqlen: int, count: int) -> np.ndarray:
    from llmprune.evaluate.perplexity import eval_windows
    from llmprune.io.loading import load_causal_lm

    _, tokenizer, _ = load_causal_lm(spec, dtype="float32", device="cpu")
    return eval_windows(tokenizer, "wikipedia", "test", seqlen, count).numpy()


def markdown(result: dict) -> str:
    lines = [
        "# llama.cpp: dense against shrunk GGUF files",
        "",
        f"Command: `{result['command']}`",
        "",
        f"llama-cpp-python {result['llama_cpp_version']}, {result['threads']} thread(s), batch 1; prefill of "
        f"{result['prefill_len']} tokens, then {result['decode_tokens']} single-token decode steps; median of "
        f"{result['repeats']} interleaved repeats. Perplexity: the first {result['ppl_windows']} Wikipedia test windows of "
        f"{result['seqlen']} tokens (llmprune's protocol), llama.cpp's own logits. The machine was shared (2 cores, "
        "other sessions' jobs running), so absolute speeds move between runs; the ratios compare files measured "
        "side by side in the same run.",
        "",
        "| model | GGUF type | file MiB | prefill tok/s | decode tok/s | decode vs dense | prefill vs dense | ppl (llama.cpp) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense = {e["type"]: e for e in result["files"] if e["label"] == result["baseline"]}
    for entry in result["files"]:
        base = dense.get(entry["type"])
        ratio = f"{entry['decode_tps'] / base['decode_tps']:.2f}x" if base else "-"
        pratio = f"{entry['prefill_tps'] / base['prefill_tps']:.2f}x" if base else "-"
        ppl = f"{entry['ppl']['ppl']:.2f}" if entry.get("ppl") else "-"
        lines.append(f"| {entry['label']} | {entry['type']} | {entry['bytes'] / 2**20:.1f} | {entry['prefill_tps']:.1f} | "
                     f"{entry['decode_tps']:.1f} | {ratio} | {pratio} | {ppl} |")
    if result.get("transformers"):
        lines += ["", "Perplexity of the same windows through transformers (the saved folder, float32) against llama.cpp "
                  "on the F16 file:", "", "| model | transformers | llama.cpp F16 | difference |", "|---|---|---|---|"]
        for label, reference in result["transformers"].items():
            f16 = next((e for e in result["files"] if e["label"] == label and e["type"] == "F16" and e.get("ppl")), None)
            if f16:
                diff = f16["ppl"]["ppl"] / reference["ppl"] - 1
                lines.append(f"| {label} | {reference['ppl']:.3f} | {f16['ppl']['ppl']:.3f} | {diff:+.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="LABEL=FOLDER (or alias); the first is the baseline")
    parser.add_argument("--types", default="f16,q8_0,q4_k_m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefill-len", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--ppl-windows", type=int, default=64, help="0: no perplexity")
    parser.add_argument("--ppl-threads", type=int, default=2, help="threads for the perplexity passes (not timed)")
    parser.add_argument("--ppl-types", default="f16,q8_0,q4_k_m", help="GGUF types whose perplexity is measured")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers reference perplexity")
    parser.add_argument("--source-gguf", default=None, help="the GGUF file whose tokenizer and description every "
                        "export keeps (default: the one each folder's report names)")
    parser.add_argument("--workdir", default="out/llamacpp", help="where the GGUF files are written (and reused)")
    parser.add_argument("--output", default=str(RESULTS / "llamacpp"))
    args = parser.parse_args(argv)
    import llama_cpp

    models = parse_models(args.model)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    entries = gguf_files(models, types, workdir, args.source_gguf)
    first = next(iter(models.values()))
    windows = test_windows(first, args.seqlen, max(args.ppl_windows, 1))
    text = windows.reshape(-1)
    prompt = text[: args.prefill_len].tolist()
    follow = text[args.prefill_len: args.prefill_len + args.decode_tokens].tolist()
    measure_speed(entries, prompt, follow, args.threads, args.repeats)
    print("speed done", flush=True)
    ppl_types = {parse_gguf_type(t).name for t in args.ppl_types.split(",") if t.strip()}
    if args.ppl_windows:
        for entry in entries:
            if entry["type"] in ppl_types:
                entry["ppl"] = llama_cpp_ppl(entry["path"], windows[: args.ppl_windows], args.ppl_threads)
                print(f"{entry['label']} {entry['type']}: ppl {entry['ppl']['ppl']:.3f}", flush=True)
    reference = {}
    if args.ppl_windows and not args.no_transformers and "F16" in ppl_types:
        for label, spec in models.items():
            reference[label] = transformers_ppl(spec, args.seqlen, args.ppl_windows)
            print(f"{label} transformers: ppl {reference[label]['ppl']:.3f}", flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + list(argv if argv is not None else sys.argv[1:])),
        "llama_cpp_version": llama_cpp.__version__, "threads": args.threads, "repeats": args.repeats,
        "prefill_len": args.prefill_len, "decode_tokens": args.decode_tokens, "seqlen": args.seqlen,
        "ppl_windows": args.ppl_windows, "baseline": next(iter(models)), "models": models, "files": entries,
        "transformers": reference, "versions": versions(),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
