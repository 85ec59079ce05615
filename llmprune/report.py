"""The run report (``llmprune_report.json``), the same for every mode.

It never overstates: ``total_sparsity`` is taken over every weight the run was asked to prune, and
``coverage`` says what share of the blocks' parameters that is, naming the block tensors left dense.
"""
from __future__ import annotations

import time

from torch import nn

from .anatomy import block_weights, find_blocks
from .process import peak_rss_mb, versions

# Below this share of the blocks' matrix parameters pruned, the run warns (e.g. a family whose main
# weights are not linear layers, or an --ignore that leaves out most of the model).
COVERAGE_WARNING_SHARE = 0.9
LARGEST_LISTED = 5


def coverage(model: nn.Module, pruned: dict[str, int]) -> dict:
    """Which of the blocks' parameters the run pruned, and the largest block tensors it left dense.

    Each tensor left out is labelled: ``ignored`` (a prunable matrix the selection left out), or
    ``not prunable`` (norms, biases, routers and anything else the engine does not treat as a matrix).
    """
    path, blocks = find_blocks(model)
    prunable = {f"{path}.{i}.{name}.weight" for i, block in enumerate(blocks) for name in block_weights(block)}
    pruned_tensors = {f"{name}.weight" for name in pruned}
    total = matrices = 0
    left_out = []
    for index, block in enumerate(blocks):
        for name, tensor in block.named_parameters():
            full = f"{path}.{index}.{name}"
            total += tensor.numel()
            if tensor.dim() >= 2:
                matrices += tensor.numel()
            if full in pruned_tensors:
                continue
            reason = "ignored" if full in prunable else "not prunable"
            left_out.append({"tensor": full, "parameters": tensor.numel(), "reason": reason})
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
        "versions": versions(),
        "coverage": coverage(model, sizes),
        "layers": layers,
    }
