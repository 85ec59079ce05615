"""Streaming vs in-memory pruning: peak resident memory and wall time, each run in its own process.

    python eval/bench_stream.py --part small   # bundled SmolLM2, Wanda 50%, 32 x 512 calibration
    python eval/bench_stream.py --part large   # random Llama with 7B-like blocks (>6 GB bf16), Wanda, 8 x 128

Each mode runs the ``llmprune`` command (load, prune, save) in a child process; the child's peak
resident memory comes from the kernel (``wait4`` rusage), wall time from the parent. The large
model is written tensor by tensor (never whole in memory) into a scratch folder, pruned in
streaming mode and then in memory for contrast (when the memory is there), and deleted after.
Targets (issue 6): small: stream peak <= 0.5 x in-memory peak, time <= 1.3 x; large: stream peak
<= 1/4 of the model's size on disk. Results go to eval/results/stream.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "eval" / "results"

LARGE = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
             vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)


# The child runs the command unchanged, plus two measurements of its own high-water mark
# (VmHWM; the rusage of a child also counts the parent's memory at fork time, which for the large
# part is the model builder's): just before the calibration windows are built, then reset there
# and read again at exit, so the pruning phase proper (model, blocks, activations) can be told
# apart from what comes before it. The run's peak is the larger of the two.
CHILD = """
import atexit, sys
import llmprune.calibration as calibration
build = calibration.calibration_batch
def high_water_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return line.split()[1]
def measured(*args, **kwargs):
    print('BEFORE_PEAK_KB', high_water_kb(), flush=True)
    ids = build(*args, **kwargs)
    with open('/proc/self/clear_refs', 'w') as handle:
        handle.write('5')
    return ids
calibration.calibration_batch = measured
atexit.register(lambda: print('PHASE_PEAK_KB', high_water_kb(), flush=True))
from llmprune.cli import main
sys.exit(main())
"""


def run_child(args: list[str], env_extra: dict | None = None) -> dict:
    """Run ``llmprune ARGS`` in a fresh process; its wall time, peak RSS and pruning-phase peak (MiB)."""
    env = dict(os.environ, **(env_extra or {}))
    command = [sys.executable, "-c", CHILD, *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"llmprune {' '.join(args)} failed ({code}):\n{output[-3000:]}")
    def kilobytes(tag: str) -> int:
        values = [int(line.split()[1]) for line in output.splitlines() if line.startswith(tag)]
        return values[-1] if values else 0

    before, phase = kilobytes("BEFORE_PEAK_KB"), kilobytes("PHASE_PEAK_KB")
    return {
        "seconds": round(seconds, 1), "peak_rss_mb": round(max(before, phase) / 1024, 1),
        "phase_peak_mb": round(phase / 1024, 1), "rusage_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
        "tail": [line for line in output.strip().splitlines() if "_PEAK_KB" not in line][-4:],
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.name != "llmprune_report.json")
    if names != sorted(p.name for p in b.iterdir() if p.name != "llmprune_report.json"):
        return False
    return all(_same_bytes(a / n, b / n) for n in names)


def _same_bytes(x: Path, y: Path, block: int = 64 * 2**20) -> bool:
    if x.stat().st_size != y.stat().st_size:
        return False
    with open(x, "rb") as fx, open(y, "rb") as fy:
        while True:
            bx, by = fx.read(block), fy.read(block)
            if bx != by:
                return False
            if not bx:
                return True


def build_large_model(folder: Path, layers: int) -> None:
    """A random-weight Llama with 7B-like blocks saved in bf16 safetensors, one tensor in memory at a time."""
    import transformers
    from accelerate import init_empty_weights

    from llmprune.io.streaming import OutputPlan, write_model_files

    config = transformers.LlamaConfig(**LARGE, num_hidden_layers=layers)
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True)
    plan = OutputPlan(model)
    writer = plan.open(folder)
    generator = torch.Generator().manual_seed(0)
    for name, (dtype, shape) in plan.specs.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        writer.write(name, tensor)
        del tensor
    writer.finish()
    plan.write_index(folder)
    write_model_files(model, folder)
    # A word-level tokenizer trained on the bundled corpus, so calibration ids fit the 32000-word vocabulary.
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llmprune.data import wikipedia_text

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([wikipedia_text("train")[:2_000_000]], trainers.WordLevelTrainer(vocab_size=32000, special_tokens=["<unk>"]))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(folder)


def part_small(args, scratch: Path) -> dict:
    common = ["--model", "llama", "--method", "wanda", "--sparsity", "0.5", "--nsamples", str(args.nsamples),
              "--seqlen", str(args.seqlen), "--no-progress"]
    if args.batch_size:
        common += ["--batch-size", str(args.batch_size)]
    runs = {}
    for repeat in range(args.repeats):
        for mode in ("memory", "stream"):
            out = scratch / f"small-{mode}-{repeat}"
            result = run_child(common + ["--output", str(out)] + (["--stream"] if mode == "stream" else []))
            runs.setdefault(mode, []).append(result)
    identical = same_files(scratch / "small-memory-0", scratch / "small-stream-0")
    best = {
        mode: {key: min(r[key] for r in rs) for key in ("seconds", "peak_rss_mb", "phase_peak_mb")}
        for mode, rs in runs.items()
    }
    model_mb = folder_bytes(scratch / "small-memory-0") / 2**20
    return {
        "model": "bundled SmolLM2-135M (float32)", "model_mb": round(model_mb, 1), "runs": runs, "best": best,
        "identical_output": identical,
        "peak_ratio": best["stream"]["peak_rss_mb"] / best["memory"]["peak_rss_mb"],
        "phase_peak_ratio": best["stream"]["phase_peak_mb"] / best["memory"]["phase_peak_mb"],
        "time_ratio": best["stream"]["seconds"] / best["memory"]["seconds"],
    }


def part_large(args, scratch: Path) -> dict:
    import psutil

    source = scratch / "large-llama"
    layers = args.large_layers
    block_bytes = (4 * LARGE["hidden_size"] ** 2 + 3 * LARGE["hidden_size"] * LARGE["intermediate_size"]) * 2
    expected = layers * block_bytes + 2 * LARGE["vocab_size"] * LARGE["hidden_size"] * 2
    free_disk = shutil.disk_usage(scratch).free
    if free_disk < 2.3 * expected:
        raise SystemExit(f"not enough disk in {scratch}: {free_disk / 2**30:.1f} GiB free, {2.3 * expected / 2**30:.1f} GiB needed")
    started = time.perf_counter()
    build_large_model(source, layers)
    build_seconds = time.perf_counter() - started
    size = folder_bytes(source)
    # 8 x 128 tokens need no 4.4 MB corpus: a slice of it keeps tokenising from setting the peak.
    calibration = scratch / "calibration.txt"
    from llmprune.data import wikipedia_text

    calibration.write_text(wikipedia_text("train")[: args.large_calibration_chars], encoding="utf-8")
    common = ["--model", str(source), "--calibration", str(calibration), "--method", "wanda", "--sparsity", "0.5", "--dtype", "bfloat16",
              "--nsamples", str(args.large_nsamples), "--seqlen", str(args.large_seqlen), "--no-progress"]
    result = {"model": f"random Llama, {layers} blocks, hidden 4096, intermediate 11008, vocab 32000, bf16",
              "model_bytes": size, "build_seconds": round(build_seconds, 1)}
    stream = run_child(common + ["--stream", "--output", str(scratch / "large-stream")])
    result["stream"] = stream
    result["stream_peak_share_of_model"] = stream["peak_rss_mb"] * 2**20 / size
    shutil.rmtree(scratch / "large-stream")
    available = psutil.virtual_memory().available
    if args.large_memory and available > 1.6 * size:
        memory = run_child(common + ["--output", str(scratch / "large-memory")])
        result["memory"] = memory
        result["memory_peak_share_of_model"] = memory["peak_rss_mb"] * 2**20 / size
        shutil.rmtree(scratch / "large-memory")
    else:
        result["memory"] = f"skipped: {available / 2**30:.1f} GiB available, about {1.6 * size / 2**30:.1f} GiB wanted"
    shutil.rmtree(source)
    return result


def write_results(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    previous.update(result)
    out.with_suffix(".json").write_text(json.dumps(previous, indent=2) + "\n", encoding="utf-8")
    lines = ["# Streaming vs in-memory pruning", ""]
    for key in sorted(k for k in previous if k.startswith("small")) + sorted(k for k in previous if k.startswith("large")):
        part = previous[key]
        lines += [f"## {key}: {part['model']}", "", f"Command: `{part['command']}`", ""]
        if part.get("note"):
            lines += [part["note"], ""]
        if key.startswith("small"):
            lines += ["| mode | wall s (best) | peak RSS MiB (best) | peak after calibration built MiB | runs (s / MiB / MiB) |",
                      "|---|---:|---:|---:|---|"]
            for mode in ("memory", "stream"):
                runs = ", ".join(f"{r['seconds']} / {r['peak_rss_mb']} / {r['phase_peak_mb']}" for r in part["runs"][mode])
                best = part["best"][mode]
                lines.append(f"| {mode} | {best['seconds']} | {best['peak_rss_mb']} | {best['phase_peak_mb']} | {runs} |")
            lines += ["", f"- stream / memory peak, whole run: **{part['peak_ratio']:.2f}** (target <= 0.5)",
                      f"- stream / memory peak after the calibration windows are built: **{part['phase_peak_ratio']:.2f}**",
                      f"- stream / memory time: **{part['time_ratio']:.2f}** (target <= 1.3)",
                      f"- output folders identical byte for byte (report aside): {part['identical_output']}", ""]
        else:
            size_gb = part["model_bytes"] / 2**30
            lines += [f"Model on disk: {size_gb:.2f} GiB (built in {part['build_seconds']} s).", "",
                      "| mode | wall s | peak RSS MiB | peak / model size |", "|---|---:|---:|---:|",
                      f"| stream | {part['stream']['seconds']} | {part['stream']['peak_rss_mb']} | {part['stream_peak_share_of_model']:.3f} |"]
            if isinstance(part.get("memory"), dict):
                lines.append(f"| memory | {part['memory']['seconds']} | {part['memory']['peak_rss_mb']} | {part['memory_peak_share_of_model']:.3f} |")
            else:
                lines.append(f"| memory | - | - | {part.get('memory')} |")
            lines += ["", "Target: stream peak <= 0.25 x model size.", ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["small", "large", "all"], default="all")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="small model: calibration windows per chunk, both modes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode on the small model (best is kept)")
    parser.add_argument("--large-layers", type=int, default=14)
    parser.add_argument("--large-nsamples", type=int, default=8)
    parser.add_argument("--large-seqlen", type=int, default=128)
    parser.add_argument("--large-calibration-chars", type=int, default=300_000, help="calibration text for the large model")
    parser.add_argument("--no-large-memory", dest="large_memory", action="store_false", help="skip the in-memory contrast run")
    parser.add_argument("--scratch", default=None, help="folder for the models written (default: a temp folder)")
    parser.add_argument("--output", default=str(RESULTS / "stream"))
    args = parser.parse_args()
    command = "python eval/bench_stream.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    scratch = Path(tempfile.mkdtemp(prefix="llmprune-stream-", dir=args.scratch))
    result = {}
    try:
        if args.part in ("small", "all"):
            key = f"small_batch{args.batch_size}" if args.batch_size else "small"
            result[key] = {"command": command, **part_small(args, scratch)}
        if args.part in ("large", "all"):
            result["large"] = {"command": command, **part_large(args, scratch)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(result, Path(args.output))


if __name__ == "__main__":
    main()
