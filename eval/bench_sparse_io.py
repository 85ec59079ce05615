"""Benchmark: how much smaller the sparse safetensors are, and what saving + loading them costs.

On the bundled SmolLM2-135M in bfloat16, each block's linear layers are pruned by per-row
magnitude (50% unstructured, 2:4, 90% unstructured); the same model is then saved dense and
sparse, and loaded back (transformers ``from_pretrained`` for dense, ``load_pretrained`` for
sparse). Sizes are exact; times are the median of ``--repeats`` interleaved runs, compared
only as ratios measured in the same run. Every sparse load is checked bit-exact.

    OMP_NUM_THREADS=1 .venv/bin/python eval/bench_sparse_io.py
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmprune.io.loading import load_pretrained  # noqa: E402
from llmprune.io.sparse import save_sparse_model, weight_files  # noqa: E402
from llmprune.anatomy import find_blocks, is_linear  # noqa: E402
from llmprune.io.loading import load_causal_lm  # noqa: E402

TARGETS = {"50% unstructured": 0.57, "2:4": 0.57, "90% unstructured": 0.17}


def block_linears(model) -> dict[str, torch.nn.Module]:
    prefix, blocks = find_blocks(model)
    return {
        f"{prefix}.{i}.{name}": module
        for i, block in enumerate(blocks)
        for name, module in block.named_modules()
        if is_linear(module)
    }


def prune(model, setting: str) -> dict[str, float]:
    """Per-row magnitude: the smallest |w| of each row (or of each group of 4 for 2:4) become zero."""
    layers = {}
    for name, module in block_linears(model).items():
        weight = module.weight.data
        if setting == "2:4":
            groups = weight.view(weight.shape[0], -1, 4)
            groups.scatter_(-1, groups.float().abs().argsort(dim=-1)[..., :2], 0)
        else:
            fraction = 0.5 if setting.startswith("50") else 0.9
            drop = int(round(weight.shape[1] * fraction))
            weight.scatter_(1, weight.float().abs().argsort(dim=1)[:, :drop], 0)
        layers[name] = 1 - int(weight.count_nonzero()) / weight.numel()
    return layers


def weight_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in weight_files(folder))


def compressed_part_bytes(folder: Path, modules: list[str]) -> int:
    """Bytes of the tensors that stand for the pruned weights (values, bitmask, shape, offsets)."""
    wanted = set(modules)
    total = 0
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key.rpartition(".")[0] in wanted:
                    tensor = handle.get_slice(key)
                    shape = tensor.get_shape()
                    count = 1
                    for dim in shape:
                        count *= dim
                    total += count * {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I64": 8}[tensor.get_dtype()]
    return total


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k].view(torch.int16), b[k].view(torch.int16)) for k in a)


def run_setting(original: dict[str, torch.Tensor], model, setting: str, repeats: int, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model.load_state_dict(original)
    layers = prune(model, setting)
    report = {"pattern": "2:4" if setting == "2:4" else None, "layers": layers}
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    times = {"dense_save": [], "dense_load": [], "sparse_save": [], "sparse_load": []}
    exact = True
    for r in range(repeats):
        dense, sparse = work / f"dense-{r}", work / f"sparse-{r}"
        # alternate the order so a busy neighbour does not always hit the same side
        order = ("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")
        for kind in order:
            if kind == "dense":
                seconds, _ = timed(lambda: model.save_pretrained(dense))
                times["dense_save"].append(seconds)
                seconds, loaded = timed(lambda: AutoModelForCausalLM.from_pretrained(dense, dtype=torch.bfloat16))
                times["dense_load"].append(seconds)
            else:
                seconds, _ = timed(lambda: save_sparse_model(model, sparse, report))
                times["sparse_save"].append(seconds)
                seconds, loaded = timed(lambda: load_pretrained(sparse))
                times["sparse_load"].append(seconds)
                exact = exact and same_bits(expected, loaded.state_dict())
            del loaded
    dense, sparse = work / "dense-0", work / "sparse-0"
    linear_dense = sum(m.weight.numel() * m.weight.element_size() for m in block_linears(model).values())
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "setting": setting,
        "sparsity_of_pruned_layers": sum(m.weight.numel() * layers[n] for n, m in block_linears(model).items()) / sum(
            m.weight.numel() for m in block_linears(model).values()
        ),
        "dense_weight_bytes": weight_bytes(dense),
        "sparse_weight_bytes": weight_bytes(sparse),
        "file_ratio": weight_bytes(sparse) / weight_bytes(dense),
        "pruned_layers_dense_bytes": linear_dense,
        "pruned_layers_sparse_bytes": compressed_part_bytes(sparse, list(layers)),
        "target": TARGETS[setting],
        "seconds_median": median,
        "seconds_all": times,
        "save_load_ratio": (median["sparse_save"] + median["sparse_load"]) / (median["dense_save"] + median["dense_load"]),
        "save_load_ratio_best": (min(times["sparse_save"]) + min(times["sparse_load"]))
        / (min(times["dense_save"]) + min(times["dense_load"])),
        "bit_exact": exact,
    }
    result["pruned_layers_ratio"] = result["pruned_layers_sparse_bytes"] / linear_dense
    for r in range(repeats):
        shutil.rmtree(work / f"dense-{r}", ignore_errors=True)
        shutil.rmtree(work / f"sparse-{r}", ignore_errors=True)
    return result


def write_results(results: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        "# Sparse safetensors: size and save+load time",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Model: {meta['model']} in bfloat16 ({meta['params']:,} parameters, of which {meta['pruned_params']:,} "
        f"({meta['pruned_share']:.1%}) in the linear layers of the blocks; the tied embedding is never pruned). "
        f"Pruning: per-row magnitude. Machine: {meta['machine']}. Times: median of {meta['repeats']} interleaved runs.",
        "",
        "| setting | dense weights | sparse weights | file ratio | pruned layers only | size target | save+load sparse / dense (median; best) | bit-exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['setting']} | {r['dense_weight_bytes'] / 2**20:.1f} MiB | {r['sparse_weight_bytes'] / 2**20:.1f} MiB | "
            f"{r['file_ratio']:.3f}x | {r['pruned_layers_ratio']:.3f}x | {r['target']}x | "
            f"{r['save_load_ratio']:.2f}x; {r['save_load_ratio_best']:.2f}x | "
            f"{'yes' if r['bit_exact'] else 'NO'} |"
        )
    lines += [
        "",
        "| setting | dense save | dense load | sparse save | sparse load |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        s = r["seconds_median"]
        lines.append(
            f"| {r['setting']} | {s['dense_save']:.2f} s | {s['dense_load']:.2f} s | {s['sparse_save']:.2f} s | {s['sparse_load']:.2f} s |"
        )
    lines += [
        "",
        "File ratio: all weight files of the sparse folder over those of the dense one. Pruned layers only: the",
        "tensors standing for the pruned weights (values, bitmask, shape, row offsets) over their dense bytes.",
        "The unpruned embedding (a fifth of this small model) is stored as it is in both folders, so the file",
        "ratio cannot go below share_pruned x layer_ratio + (1 - share_pruned).",
        "",
        "Times: the medians of each step (best: the fastest of each step), with the other developers' jobs",
        "running on the same 2 cores; single runs of the same step vary by up to 10x (see the .json).",
        "A dense load maps the file and reads pages only when they are used; a sparse load reads and",
        "decompresses every pruned weight before returning.",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--out", default=str(ROOT / "eval" / "results" / "sparse_io"))
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",")]
    model, _, path = load_causal_lm("llama", dtype="bfloat16", device="cpu")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    linears = block_linears(model)
    pruned_params = sum(m.weight.numel() for m in linears.values())
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "command": "OMP_NUM_THREADS=" + str(torch.get_num_threads()) + " .venv/bin/python eval/bench_sparse_io.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "model": "SmolLM2-135M-Instruct (bundled, alias 'llama')",
        "params": params,
        "pruned_params": pruned_params,
        "pruned_share": pruned_params / params,
        "repeats": args.repeats,
        "machine": f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), shared with other jobs",
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sparse-io-") as tmp:
        for setting in settings:
            result = run_setting(original, model, setting, args.repeats, Path(tmp))
            print(json.dumps({k: v for k, v in result.items() if k != "seconds_all"}), flush=True)
            results.append(result)
    write_results(results, meta, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
