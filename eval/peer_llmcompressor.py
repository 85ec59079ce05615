"""Prune with llmcompressor (Wanda or SparseGPT) on given calibration windows; run by a peer python.

llmcompressor 0.14 pins transformers<=5.17 while llmprune's venv has 5.24, so it lives in its
own venv and this script runs there (``bench_results_table.py --peer-python``). It imports
nothing from llmprune. It writes the pruned block weights (safetensors) and a small JSON report;
the benchmark loads the weights into its own copy of the model and evaluates both libraries'
models with the same code.

    PEER/bin/python eval/peer_llmcompressor.py --model-dir DIR --method wanda --sparsity 0.5 \
        --calibration ids.json --weights out.safetensors --report out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import time


def own_peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM), measured as llmprune measures its rows: rusage
    would also count the driver's memory at the moment it started this process."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def patch_owl(modifier_class) -> None:
    """Work around two bugs of llmcompressor 0.14's OWL (sparsity_profile="owl"); the OWL arithmetic stays its own.

    1. It measures activations with its basic pipeline from inside the modifier's initialisation, which
       fires session events before the session is initialised ("Cannot invoke event before initializing").
       Its statistics hooks are attached by then, so a plain forward over its dataloader feeds them.
    2. It returns the block sparsities as a dict, but the pruning hooks read per-block sparsities only from
       a list (a dict would be taken as one sparsity): the dict is handed on as a list in block order.
    """
    import torch
    import llmcompressor.pipelines.basic as basic

    infer = modifier_class._infer_owl_layer_sparsity

    def infer_as_list(self, model, layers, dataloader):
        return [float(value) for value in infer(self, model, layers, dataloader).values()]

    modifier_class._infer_owl_layer_sparsity = infer_as_list

    def run_calibration(model, dataloader):
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in dataloader:
                model(**{k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})

    basic.run_calibration = run_calibration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    parser.add_argument("--sparsity", type=float)
    parser.add_argument("--pattern", help="N:M, e.g. 2:4")
    parser.add_argument("--calibration", required=True, help="JSON list of token-id windows (nsamples x seqlen)")
    parser.add_argument("--weights", required=True, help="where to write the pruned linear weights (.safetensors)")
    parser.add_argument("--report", required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--owl", action="store_true", help="OWL block sparsities (sparsity_profile='owl')")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (llmprune's default)")
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL sparsity spread lambda (llmprune's default)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    if args.threads:
        torch.set_num_threads(args.threads)
    windows = json.loads(open(args.calibration, encoding="utf-8").read())
    nsamples, seqlen = len(windows), len(windows[0])
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * seqlen for _ in windows]})
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if args.pattern:
        n, m = (int(x) for x in args.pattern.split(":"))
        sparsity, mask = n / m, args.pattern
    else:
        sparsity, mask = args.sparsity, "0:0"
    cls = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    # The same layers as llmprune prunes: every Linear inside the decoder blocks, not lm_head.
    targets, owl = ["Linear"], {}
    if args.owl:
        patch_owl(cls)
        # OWL gives one sparsity per target, so the targets are the decoder blocks (their Linears are pruned).
        targets = [type(model.model.layers[0]).__name__]
        owl = {"sparsity_profile": "owl", "owl_m": args.owl_m, "owl_lmbda": args.owl_lambda}
    modifier = cls(sparsity=sparsity, mask_structure=mask, targets=targets, ignore=["re:.*lm_head"], **owl)
    started = time.perf_counter()
    oneshot(
        model=model, dataset=dataset, recipe=modifier, num_calibration_samples=nsamples,
        max_seq_length=seqlen, shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - started
    peak = own_peak_rss_mb()
    weights = {
        name + ".weight": module.weight.detach().to(torch.float32).contiguous().clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }
    save_file(weights, args.weights)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    by_block: dict[int, list[int]] = {}
    for name, w in weights.items():  # names look like model.layers.<i>.<...>.weight
        counts = by_block.setdefault(int(name.split(".layers.")[1].split(".")[0]), [0, 0])
        counts[0] += int((w == 0).sum())
        counts[1] += w.numel()
    total = sum(w.numel() for w in weights.values())
    report = {
        "library": f"llmcompressor {llmcompressor.__version__}",
        "method": args.method + ("+owl" if args.owl else ""),
        "pattern": args.pattern,
        "target_sparsity": sparsity,
        "total_sparsity": zeros / total,
        "block_sparsity": [round(z / n, 4) for _, (z, n) in sorted(by_block.items())],
        "prune_seconds": round(seconds, 3),
        "peak_rss_mb": round(peak, 1),
        "calibration": {"nsamples": nsamples, "seqlen": seqlen},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    with open(args.report, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
