"""The CUDA checks: every command with ``--device cuda`` against its CPU figures, and 2:4 sparse kernels.

CI has no GPU, so this script is how the ``--device cuda`` path is checked on a machine that has one. It
runs the commands a user types (``python -m llmprune ...``, each in its own process) and reads their own
reports, then times semi-structured (2:4) sparse matrix products against dense ones.

    python eval/device_check.py --phase kernels --out results/        # no model needed
    python eval/device_check.py --phase real --model SmolLM2-135M-Instruct.Q4_1.gguf --out results/

``kernels``: 2:4 sparse against dense bfloat16/float16 products at the bundled 135M's, the 1.5B's and a
7B's layer shapes (cuSPARSELt and CUTLASS where PyTorch has them), a tiny model pruned on the GPU by every
method, and ``llmprune lth`` on the GPU. ``real``: the bundled 135M through prune (every method, 2:4,
streaming, OWL, reconstruction, bfloat16), eval and shrink on the GPU, compared with the CPU figures in
eval/results/smollm2-135m-llmprune.md (same windows and calibration), then the 2:4 model's own weights
as sparse semi-structured tensors: logits, perplexity and forward time against the same weights dense.
Writes ``device_check_<phase>.json`` and ``.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The CPU rows of eval/results/smollm2-135m-llmprune.md (32 x 512 calibration, 64 test windows):
# what the same command on the GPU should give, up to float differences.
CPU_PPL = {"dense": 14.92, "magnitude-50%": 357.35, "wanda-50%": 36.82, "sparsegpt-50%": 29.62, "sparsegpt-2:4": 57.07,
           "wanda-2:4": 134.49}
CALIBRATION = ["--nsamples", "32", "--seqlen", "512", "--eval-ppl", "--eval-windows", "64", "--no-progress"]

# (out, in) of the products in a block: the 135M, Qwen2.5-1.5B and a Llama-7B.
LAYER_SHAPES = {"135M q/o": (576, 576), "135M up": (1536, 576), "135M down": (576, 1536),
                "1.5B q/o": (1536, 1536), "1.5B up": (8960, 1536), "1.5B down": (1536, 8960),
                "7B q/o": (4096, 4096), "7B up": (11008, 4096), "7B down": (4096, 11008)}
TOKENS = (16, 128, 1024, 4096, 16384)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def run_cli(args: list[str], log: Path, env: dict | None = None, timeout: int = 900) -> dict:
    """One ``llmprune`` command in its own process: exit code, wall seconds, its last lines (printed at once)."""
    log = log.with_name(safe_name(log.name))
    # Four commands share the machine's cores at a time: threads beyond a share only oversubscribe them.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 4) // 4)), **(env or {})}
    started = time.perf_counter()
    with open(log, "w") as out:
        try:
            code = subprocess.run([sys.executable, "-m", "llmprune", *args], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **env}, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    lines = log.read_text(errors="replace").strip().splitlines()
    print(f"[{time.perf_counter() - started:6.1f} s] rc {code}: llmprune {' '.join(args)[:150]}", flush=True)
    return {"command": "llmprune " + " ".join(args), "rc": code, "wall_s": round(time.perf_counter() - started, 1),
            "tail": lines[-6:]}


def read_report(folder: Path) -> dict:
    path = folder / "llmprune_report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def prune_row(name: str, result: dict, report: dict) -> dict:
    ppl = report.get("eval", {})
    row = {"run": name, "rc": result["rc"], "wall_s": result["wall_s"], "prune_s": report.get("prune_seconds"),
           "ppl_before": ppl.get("ppl_before"), "ppl_after": ppl.get("ppl_after"),
           "sparsity": report.get("total_sparsity"), "peak_gpu_mb": report.get("peak_gpu_mb"),
           "peak_rss_mb": report.get("peak_rss_mb"), "cpu_ppl": CPU_PPL.get(name)}
    if row["ppl_after"] and row["cpu_ppl"]:
        row["ppl_vs_cpu"] = round(row["ppl_after"] / row["cpu_ppl"] - 1, 4)
    if result["rc"] != 0:
        row["tail"] = result["tail"]
    return row


# ---------------------------------------------------------------------------------------------------------
# 2:4 kernels


def median_ms(fn, repeats: int = 30) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def two_four(weight):
    """Keep the two largest of every four consecutive inputs (the 2:4 pattern the kernels read)."""
    import torch

    groups = weight.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return (groups * keep).reshape(weight.shape)


def kernel_table(dtype_name: str) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    dtype = getattr(torch, dtype_name)
    rows = []
    backends = [("cusparselt", False), ("cutlass", True)]
    for label, (out_features, in_features) in LAYER_SHAPES.items():
        generator = torch.Generator(device="cuda").manual_seed(0)
        weight = two_four(torch.randn(out_features, in_features, device="cuda", dtype=dtype, generator=generator))
        for backend, force_cutlass in backends:
            SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
            try:
                sparse = to_sparse_semi_structured(weight)
            except Exception as exc:  # a backend PyTorch was built without, or a shape it refuses
                rows.append({"shape": label, "backend": backend, "error": f"{type(exc).__name__}: {exc}"[:160]})
                continue
            for tokens in TOKENS:
                inputs = [torch.randn(tokens, in_features, device="cuda", dtype=dtype, generator=generator) for _ in range(4)]
                try:
                    reference = F.linear(inputs[0].double(), weight.double())
                    got = F.linear(inputs[0], sparse).double()
                    error = ((got - reference).norm() / reference.norm()).item()
                    dense_ms = median_ms(lambda: [F.linear(x, weight) for x in inputs]) / 4
                    sparse_ms = median_ms(lambda: [F.linear(x, sparse) for x in inputs]) / 4
                except Exception as exc:
                    rows.append({"shape": label, "backend": backend, "tokens": tokens, "error": f"{type(exc).__name__}: {exc}"[:160]})
                    continue
                rows.append({"shape": label, "out": out_features, "in": in_features, "backend": backend, "tokens": tokens,
                             "dense_ms": round(dense_ms, 4), "sparse_ms": round(sparse_ms, 4),
                             "speedup": round(dense_ms / sparse_ms, 3), "rel_error": float(f"{error:.2e}")})
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return rows


def tiny_model_folder(folder: Path) -> Path:
    """A randomly initialised Llama shaped like a real one (grouped heads, head_dim given, four blocks)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    words = ("the cat sat on the mat and the dog ran in the park while birds sang " * 20).split(". ")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def phase_kernels(out: Path, work: Path) -> dict:
    import torch

    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    tiny = tiny_model_folder(work / "tiny")
    calib = work / "calib.txt"
    calib.write_text("the cat sat on the mat and the dog ran in the park while birds sang. " * 300)
    runs = {f"{method}-{pattern}": ["--model", str(tiny), "--method", method, *pattern_flags, "--calibration", str(calib),
                                    "--nsamples", "8", "--seqlen", "64", "--device", "cuda", "--no-progress",
                                    "--output", str(work / f"tiny-{method}-{pattern}")]
            for method in ("magnitude", "wanda", "sparsegpt", "ria", "admm")
            for pattern, pattern_flags in (("50%", ["--sparsity", "0.5"]), ("2:4", ["--pattern", "2:4"]))}
    runs["wanda-stream"] = ["--model", str(tiny), "--method", "wanda", "--sparsity", "0.5", "--stream", "--calibration", str(calib),
                            "--nsamples", "8", "--seqlen", "64", "--device", "cuda", "--no-progress", "--output", str(work / "tiny-stream")]
    runs["sparsegpt-reconstruct-owl"] = ["--model", str(tiny), "--method", "sparsegpt", "--sparsity", "0.7", "--owl", "--reconstruct",
                                         "--calibration", str(calib), "--nsamples", "8", "--seqlen", "64", "--device", "cuda",
                                         "--no-progress", "--output", str(work / "tiny-rec")]
    runs["cpu-wanda-50%"] = ["--model", str(tiny), "--method", "wanda", "--sparsity", "0.5", "--calibration", str(calib),
                             "--nsamples", "8", "--seqlen", "64", "--device", "cpu", "--no-progress", "--output", str(work / "tiny-cpu")]

    def one(item):
        name, args = item
        result = run_cli(args, out / f"tiny-{name.replace(':', '')}.log")
        report = read_report(Path(args[args.index("--output") + 1]))
        return {"run": name, "rc": result["rc"], "wall_s": result["wall_s"], "sparsity": report.get("total_sparsity"),
                "peak_gpu_mb": report.get("peak_gpu_mb"), **({"tail": result["tail"]} if result["rc"] != 0 else {})}

    with ThreadPoolExecutor(4) as pool:
        results["tiny"] = list(pool.map(one, runs.items()))
    results["tiny_masks_cpu_vs_cuda"] = compare_masks(work / "tiny-cpu", work / "tiny-wanda-50%")
    lth = run_cli(["lth", "--preset", "lenet", "--data", "mnist1d", "--hidden", "100,100", "--iterations", "600",
                   "--batch-size", "100", "--rounds", "2", "--trials", "2", "--controls", "reinit", "--device", "cuda",
                   "--no-progress", "--output", str(work / "lth")], out / "lth.log")
    lth_report = work / "lth" / "lth_report.json"
    results["lth"] = {**lth, "report": lth_report.exists()}
    results["kernels"] = {dtype: kernel_table(dtype) for dtype in ("bfloat16", "float16")}
    return results


def compare_masks(cpu_folder: Path, cuda_folder: Path) -> dict:
    """Share of weights whose kept/dropped state differs between a CPU and a CUDA run of the same command."""
    from safetensors.torch import load_file

    def tensors(folder):
        found = {}
        for path in sorted(folder.glob("*.safetensors")):
            found.update(load_file(str(path)))
        return found

    if not cpu_folder.exists() or not cuda_folder.exists():
        return {"error": "a folder is missing"}
    cpu, cuda = tensors(cpu_folder), tensors(cuda_folder)
    differing = total = 0
    for name, weight in cpu.items():
        if name.endswith("proj.weight") and name in cuda:
            differing += int(((weight == 0) != (cuda[name] == 0)).sum())
            total += weight.numel()
    return {"weights": total, "mask_disagreement": differing / total if total else None}


# ---------------------------------------------------------------------------------------------------------
# the bundled 135M


def phase_real(model: str, out: Path, work: Path) -> dict:
    import torch

    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    common = ["--model", model, *CALIBRATION, "--device", "cuda"]

    def prune(name: str, extra: list[str], dtype: str = "float32") -> dict:
        folder = work / name.replace(":", "")
        result = run_cli([*common, "--dtype", dtype, *extra, "--output", str(folder)], out / f"{name.replace(':', '')}.log")
        return prune_row(name, result, read_report(folder))

    # First alone (clean timings), with a warm cache for the dequantised model.
    for name, extra in (("wanda-50%", ["--method", "wanda", "--sparsity", "0.5"]),
                        ("sparsegpt-50%", ["--method", "sparsegpt", "--sparsity", "0.5"])):
        results["runs"].append(prune(name, extra))
    jobs = [("magnitude-50%", ["--method", "magnitude", "--sparsity", "0.5"], "float32"),
            ("sparsegpt-2:4", ["--method", "sparsegpt", "--pattern", "2:4"], "float32"),
            ("wanda-2:4", ["--method", "wanda", "--pattern", "2:4"], "float32"),
            ("ria-50%", ["--method", "ria", "--sparsity", "0.5"], "float32"),
            ("admm-50%", ["--method", "admm", "--sparsity", "0.5"], "float32"),
            ("wanda-50%-stream", ["--method", "wanda", "--sparsity", "0.5", "--stream"], "float32"),
            ("wanda-50%-bfloat16", ["--method", "wanda", "--sparsity", "0.5"], "bfloat16"),
            ("sparsegpt-70%-owl-reconstruct", ["--method", "sparsegpt", "--sparsity", "0.7", "--owl", "--reconstruct"], "float32")]
    with ThreadPoolExecutor(4) as pool:
        results["runs"] += list(pool.map(lambda job: prune(*job), jobs))
    results["stream_equals_memory"] = compare_masks(work / "wanda-50%", work / "wanda-50%-stream")
    shrink_folder = work / "shrink-25"
    shrink = run_cli(["shrink", "--model", model, "--ratio", "0.25", "--device", "cuda", "--no-progress",
                      "--output", str(shrink_folder)], out / "shrink.log")
    results["shrink"] = {**shrink, "report": {k: read_report(shrink_folder).get(k) for k in
                                              ("ratio_reached", "shrink_seconds", "peak_gpu_mb", "eval")}}
    evaluated = run_cli(["eval", "--model", str(work / "wanda-50%"), "--ppl", "wikipedia", "--device", "cuda",
                         "--json", str(work / "eval.json")], out / "eval.log")
    results["eval"] = {**evaluated, "json": json.loads((work / "eval.json").read_text()) if (work / "eval.json").exists() else None}
    results["sparse_model"] = sparse_model_check(work / "sparsegpt-24")
    return results


def sparse_model_check(folder: Path) -> dict:
    """The 2:4 model's block weights as semi-structured sparse tensors: same logits, perplexity and speed?"""
    import torch
    import transformers
    from torch.sparse import to_sparse_semi_structured

    if not folder.exists():
        return {"error": "the 2:4 run wrote no folder"}
    found: dict = {}
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16).cuda().eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        dense_logits = model(ids).logits.float()
        dense_ms = median_ms(lambda: model(ids), repeats=10)
        converted, refused = 0, []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                try:
                    module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
                    converted += 1
                except Exception as exc:
                    refused.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
        try:
            sparse_logits = model(ids).logits.float()
            sparse_ms = median_ms(lambda: model(ids), repeats=10)
            found["logits_rel_error"] = float(f"{((sparse_logits - dense_logits).norm() / dense_logits.norm()).item():.2e}")
            found["forward_ms"] = {"dense": round(dense_ms, 2), "sparse": round(sparse_ms, 2), "speedup": round(dense_ms / sparse_ms, 3)}
        except Exception as exc:
            found["forward_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    found.update(converted=converted, refused=refused[:5], refused_count=len(refused))
    return found


# ---------------------------------------------------------------------------------------------------------


def markdown(phase: str, results: dict) -> str:
    lines = [f"# Device check ({phase}): {results.get('device')}, torch {results.get('torch')}", ""]
    if phase == "real":
        lines += ["| run | rc | ppl before | ppl after | CPU ppl | vs CPU | prune s | peak GPU MiB | wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for row in results["runs"]:
            lines.append(f"| {row['run']} | {row['rc']} | {row['ppl_before']} | {row['ppl_after']} | {row['cpu_ppl']} | "
                         f"{row.get('ppl_vs_cpu')} | {row['prune_s']} | {row['peak_gpu_mb']} | {row['wall_s']} |")
        lines += ["", f"stream vs in memory: {results['stream_equals_memory']}", f"shrink: {json.dumps(results['shrink'])[:600]}",
                  f"eval: rc {results['eval']['rc']}, {json.dumps(results['eval'].get('json'))[:400]}",
                  f"2:4 model as semi-structured tensors: {json.dumps(results['sparse_model'])}"]
    else:
        lines += ["| tiny run | rc | sparsity | peak GPU MiB | wall s |", "|---|---|---|---|---|"]
        lines += [f"| {row['run']} | {row['rc']} | {row['sparsity']} | {row['peak_gpu_mb']} | {row['wall_s']} |" for row in results["tiny"]]
        lines += ["", f"CPU vs CUDA masks (tiny, Wanda 50%): {results['tiny_masks_cpu_vs_cuda']}",
                  f"lth on cuda: rc {results['lth']['rc']}, {results['lth']['wall_s']} s, report {results['lth']['report']}", ""]
        for dtype, rows in results["kernels"].items():
            lines += [f"## 2:4 against dense, {dtype} (ms per product, median of 30 x 4 inputs)", "",
                      "| shape | backend | tokens | dense ms | 2:4 ms | speedup | rel. error |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['shape']} | {r['backend']} | {r.get('tokens', '')} | {r.get('dense_ms', '')} | {r.get('sparse_ms', '')} | "
                      f"{r.get('speedup', r.get('error', ''))} | {r.get('rel_error', '')} |" for r in rows]
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("kernels", "real"), required=True)
    parser.add_argument("--model", help="the bundled 135M GGUF (phase real)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("device_check: no CUDA device here; this script is for a machine with one", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        results = phase_kernels(args.out, Path(work)) if args.phase == "kernels" else phase_real(args.model, args.out, Path(work))
        results["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / f"device_check_{args.phase}.json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(args.phase, results)
    (args.out / f"device_check_{args.phase}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
