"""Does pruning make inference faster? Prefill and decode tokens/s, dense vs pruned.

    python eval/bench_speed.py [--pattern 2:4] [--batch-sizes 1,4,16] [--prefill-len 256] [--decode-tokens 32]

On CUDA: the 2:4-pruned linear layers are swapped for torch's semi-structured sparse kernels
(``torch.sparse.to_sparse_semi_structured``, float16) and prefill/decode tokens/s are measured at
several batch sizes against the same model dense.
On CPU (no semi-structured kernels there): the pruned model is measured as it is saved (dense
storage, so any difference is noise), then every pruned linear is swapped for a CSR sparse
layer and measured again, and a per-layer table compares dense and CSR matmuls at the model's
layer shapes, whatever the result, including when sparse is slower.
Writes eval/results/speed.{md,json} (or --output).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmprune  # noqa: E402
from llmprune.anatomy import find_blocks, prunable_weights  # noqa: E402
from llmprune.calibration import calibration_batch  # noqa: E402
from llmprune.io.loading import load_causal_lm  # noqa: E402
from llmprune.process import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class CSRLinear(nn.Module):
    """A linear layer whose weight is stored in CSR; y = x W^T computed as (W x^T)^T with a sparse matmul."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def swap_linears(model: nn.Module, make) -> int:
    """Replace every prunable linear inside the blocks by ``make(linear)``; returns how many."""
    _, blocks = find_blocks(model)
    count = 0
    for block in blocks:
        for name, layer in ((n, w.module) for n, w in prunable_weights(block).items()):
            parent_name, _, attribute = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, attribute, make(layer))
            count += 1
    return count


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def prefill_tps(model, batch: int, length: int, vocab: int, device: str, repeats: int) -> float:
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    model(input_ids=ids[:, :16], use_cache=False)  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return batch * length / best


@torch.no_grad()
def decode_tps(model, batch: int, prompt: int, new_tokens: int, vocab: int, device: str, repeats: int) -> float:
    """Tokens/s of greedy decoding with the KV cache, prompt processing excluded."""
    from transformers import DynamicCache

    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(1)).to(device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first round warms up
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        started = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return batch * new_tokens / best


def measure(models: dict[str, nn.Module], args, vocab: int, device: str) -> list[dict]:
    """Prefill and decode tokens/s of each model, the models taking turns within every repeat so
    that a busy machine slows them alike; the best of the repeats is kept."""
    rows = []
    for batch in args.batch_sizes:
        best = {label: [0.0, 0.0] for label in models}
        for _ in range(args.repeats):
            for label, model in models.items():
                best[label][0] = max(best[label][0], prefill_tps(model, batch, args.prefill_len, vocab, device, 1))
                best[label][1] = max(best[label][1], decode_tps(model, batch, args.decode_prompt, args.decode_tokens, vocab, device, 1))
        for label, (pre, dec) in best.items():
            rows.append({"model": label, "batch": batch, "prefill_tps": round(pre, 1), "decode_tps": round(dec, 2)})
            print(f"{label:>28} batch {batch:>3}: prefill {pre:9.1f} tok/s, decode {dec:8.2f} tok/s", flush=True)
    return rows


@torch.no_grad()
def matmul_table(model, dtype: torch.dtype, tokens_list: list[int], repeats: int) -> list[dict]:
    """Dense vs CSR time for each distinct pruned layer shape of block 0, at several token counts."""
    _, blocks = find_blocks(model)
    rows, seen = [], set()
    for name, layer in ((n, w.module) for n, w in prunable_weights(blocks[0]).items()):
        weight = layer.weight.detach().to(dtype)
        if tuple(weight.shape) in seen:
            continue
        seen.add(tuple(weight.shape))
        try:
            csr = weight.to_sparse_csr()
        except RuntimeError as exc:
            rows.append({"layer": name, "shape": list(weight.shape), "error": str(exc).splitlines()[0]})
            continue
        for tokens in tokens_list:
            x = torch.randn(tokens, weight.shape[1], dtype=dtype)

            def timed(fn):
                fn()
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - started)
                return best

            try:
                dense_s = timed(lambda: x @ weight.t())
                sparse_s = timed(lambda: torch.sparse.mm(csr, x.t()))
            except RuntimeError as exc:
                rows.append({"layer": name, "shape": list(weight.shape), "tokens": tokens, "error": str(exc).splitlines()[0]})
                continue
            rows.append({
                "layer": name, "shape": list(weight.shape), "tokens": tokens, "dtype": str(dtype).split(".")[1],
                "density": round(float((weight != 0).float().mean()), 3),
                "dense_ms": round(dense_s * 1e3, 3), "csr_ms": round(sparse_s * 1e3, 3),
                "speedup": round(dense_s / sparse_s, 3),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--prefill-len", type=int, default=256)
    parser.add_argument("--decode-prompt", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--matmul-tokens", type=lambda s: [int(v) for v in s.split(",")], default=[1, 16, 256])
    parser.add_argument("--extra-sparsity", type=float, default=0.9, help="CPU table: also a magnitude-pruned copy this sparse")
    parser.add_argument("--output", default=str(RESULTS / "speed"))
    args = parser.parse_args()
    command = "python eval/bench_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_sizes is None:
        args.batch_sizes = [1, 8, 32, 64] if device == "cuda" else [1, 4]
    dtype = torch.float16 if device == "cuda" else torch.float32

    model, tokenizer, _ = load_causal_lm(args.model, dtype=dtype, device=device)
    vocab = model.config.vocab_size
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    dense_model, _, _ = load_causal_lm(args.model, dtype=dtype, device=device)
    calibration = calibration_batch(tokenizer, "wikipedia", args.nsamples, args.seqlen, seed=0)
    report = llmprune.prune(model, tokenizer, method=args.method, pattern=args.pattern, calibration_ids=calibration, device=device, progress=False)
    pruned_label = f"{args.method} {args.pattern} (dense storage)"
    models = {"dense": dense_model.to(device), pruned_label: model.to(device)}
    result = {"command": command, "device": device, "dtype": str(dtype).split(".")[1], "settings": vars(args),
              "total_sparsity": report["total_sparsity"], "versions": versions(), "threads": torch.get_num_threads()}
    # A third copy with the sparse kernels swapped in (the pruned one stays as it is).
    sparse_model, _, _ = load_causal_lm(args.model, dtype=dtype, device=device)
    sparse_model.load_state_dict(model.state_dict())
    sparse_model.to(device)
    if device == "cuda":
        from torch.sparse import to_sparse_semi_structured

        result["swapped_layers"] = swap_linears(sparse_model, lambda layer: _semi_structured(layer, to_sparse_semi_structured))
        models[f"{args.pattern} semi-structured"] = sparse_model
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["swapped_layers"] = swap_linears(sparse_model, CSRLinear)
        models[f"{args.pattern} CSR layers"] = sparse_model
    rows = measure(models, args, vocab, device)
    if device == "cpu":
        pruned_matmuls = matmul_table(model, torch.float32, args.matmul_tokens, args.repeats)
        pruned_matmuls += matmul_table(model, torch.bfloat16, args.matmul_tokens, args.repeats)
        # A much sparser copy (magnitude, per layer) shows where CSR starts to pay, if anywhere.
        model.load_state_dict(dense_state)
        llmprune.prune(model, method="magnitude", sparsity=args.extra_sparsity, progress=False, device="cpu")
        pruned_matmuls += matmul_table(model, torch.float32, args.matmul_tokens, args.repeats)
        result["matmuls"] = pruned_matmuls
    result["rows"] = rows
    write(result, Path(args.output))


def _semi_structured(layer: nn.Linear, convert) -> nn.Linear:
    layer.weight = nn.Parameter(convert(layer.weight.detach()), requires_grad=False)
    return layer


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    dense = {row["batch"]: row for row in result["rows"] if row["model"] == "dense"}
    lines = ["# Inference speed, dense vs pruned", "", f"Command: `{result['command']}`", "",
             f"Device {result['device']}{' (' + result['gpu'] + ')' if 'gpu' in result else ''}, {result['dtype']}, "
             f"{result['threads']} threads; pruned layers' sparsity {result['total_sparsity']:.3f}. "
             "Tokens/s are the best of the repeats.", "",
             "| model | batch | prefill tok/s | x dense | decode tok/s | x dense |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        base = dense[row["batch"]]
        lines.append(f"| {row['model']} | {row['batch']} | {row['prefill_tps']} | {row['prefill_tps'] / base['prefill_tps']:.2f} | "
                     f"{row['decode_tps']} | {row['decode_tps'] / base['decode_tps']:.2f} |")
    if result.get("matmuls"):
        lines += ["", "## CPU matmuls, one layer: dense vs CSR", "",
                  "| layer | shape | dtype | density | tokens | dense ms | CSR ms | dense/CSR |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for row in result["matmuls"]:
            if "error" in row:
                lines.append(f"| {row['layer']} | {row['shape']} | - | - | {row.get('tokens', '-')} | - | - | error: {row['error']} |")
            else:
                lines.append(f"| {row['layer']} | {row['shape']} | {row['dtype']} | {row['density']} | {row['tokens']} | "
                             f"{row['dense_ms']} | {row['csr_ms']} | {row['speedup']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
