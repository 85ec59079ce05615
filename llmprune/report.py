"""The run report (``llmprune_report.json``), the same for every mode.

It never overstates: ``total_sparsity`` is taken over every weight the run was asked to prune, and
``coverage`` says what share of the blocks' parameters that is, naming the block tensors left dense.
"""
from __future__ import annotations

import time

from torch import nn

from .anatomy import block_weights, find_blocks, router_weights
from .process import peak_gpu_mb, peak_rss_mb, versions

# Below this share of the blocks' matrix parameters pruned, the run warns (e.g. a family whose main
# weights are not linear layers, or an --ignore that leaves out most of the model).
COVERAGE_WARNING_SHARE = 0.9
LARGEST_LISTED = 5


def coverage(model: nn.Module, pruned: dict[str, int]) -> dict:
    """Which of the blocks' parameters the run pruned, and the largest block tensors it left dense.

    ``pruned`` maps each pruned weight's full name to its entries; weights are matched to the tensors
    that store them (one fused expert tensor holds many), so a tensor pruned only in part is listed
    with the part left dense. Each tensor left out is labelled: ``ignored`` (a prunable matrix the
    selection left out), ``router`` (a router or shared-expert gate, dense by rule), or ``not
    prunable`` (norms, biases and anything else the engine does not treat as a matrix).
    """
    path, blocks = find_blocks(model)
    pruned_in: dict[str, int] = {}  # stored tensor -> its entries that were pruned
    reason_of: dict[str, str] = {}
    for index, block in enumerate(blocks):
        prefix = f"{path}.{index}."
        for reason, weights in (("ignored", block_weights(block)), ("router", router_weights(block))):
            for name, weight in weights.items():
                tensor = prefix + weight.tensor
                reason_of[tensor] = reason
                if prefix + name in pruned:
                    pruned_in[tensor] = pruned_in.get(tensor, 0) + pruned[prefix + name]
    total = matrices = 0
    left_out = []
    for index, block in enumerate(blocks):
        for name, tensor in block.named_parameters():
            full = f"{path}.{index}.{name}"
            total += tensor.numel()
            if tensor.dim() >= 2 and not name.endswith("bias"):  # gpt-oss's expert biases are 2-D
                matrices += tensor.numel()
            left = tensor.numel() - pruned_in.get(full, 0)
            if left > 0:
                left_out.append({"tensor": full, "parameters": left, "reason": reason_of.get(full, "not prunable")})
    pruned_count = sum(pruned.values())
    left_out.sort(key=lambda entry: -entry["parameters"])
    return {
        "block_parameters": total,
        "block_matrix_parameters": matrices,
        "pruned_parameters": pruned_count,
        "pruned_share_of_blocks": pruned_count / total if total else 0.0,
        "pruned_share_of_block_matrices": pruned_count / matrices if matrices else 0.0,
        "left_dense": left_out,
    }


def coverage_warning(entry: dict) -> str | None:
    """One line when the run pruned less than 90% of the blocks' matrix parameters."""
    share = entry["pruned_share_of_block_matrices"]
    if share >= COVERAGE_WARNING_SHARE:
        return None
    largest = [e for e in entry["left_dense"] if e["parameters"] > 0][:LARGEST_LISTED]
    names = ", ".join(f"{e['tensor']} ({e['parameters']:,}, {e['reason']})" for e in largest[:3])
    return (f"llmprune: warning: only {share:.1%} of the blocks' matrix parameters were pruned; "
            f"largest left dense: {names}")


def prune_report(model: nn.Module, method, target, layers: dict[str, float], sizes: dict[str, int], calibration: dict,
                 targets, ignore, started: float) -> dict:
    """The report of a run (in memory or streaming): what was asked, what came out, what it cost."""
    total = sum(sizes.values())
    zeros = sum(layers[name] * sizes[name] for name in layers)
    return {
        "model": getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "method": method.name,
        "pattern": target.pattern,
        "target_sparsity": target.sparsity,
        "total_sparsity": zeros / total if total else 0.0,
        "calibration": calibration,
        "targets": targets,
        "ignore": ignore,
        "prune_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": peak_gpu_mb(),
        "versions": versions(),
        "coverage": coverage(model, sizes),
        "layers": layers,
    }
