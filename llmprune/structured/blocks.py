"""Whole blocks: which to remove, and the linear bridge that stands in for a removed run.

Ranking (``--block-score``):
- ``angular``: ShortGPT's block influence, 1 - mean cos(x_in, x_out), from one dense pass;
- ``span``: the contiguous run whose input and output are closest in angle (Gromov et al.);
- ``loss``: the calibration language-model loss of the model with that block alone skipped, one
  forward of a few calibration windows per block (the most direct measure, and the slowest).

The bridge (``--block-correction``, ReplaceMe-style): a run of removed blocks maps the residual stream
O (the output of the kept block before the run) to L (what the run would have produced). With M the
MLP output of that kept block, O = Y + M, and replacing M by M T changes its output to O + M (T - I).
T is fitted by least squares, min ||M (T - I) - (L - O)||^2 over the calibration tokens (damped
towards T = I, no correction), and folded into the MLP's output layer: W' = T^T W (and b' = T^T b), so
the saved model stays a stock one. A run at the very start has no kept block before it and is not bridged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..anatomy import weight_matrix
from ..engine import BlockInputs, Lifecycle, copy_inputs, propagate, run_block
from ..engine.capture import block_output
from ..errors import LLMPruneError
from ..reconstruct import relative_error
from .layouts import FamilyLayout
from .surgery import keep_inputs, submodule

BLOCK_SCORES = ("angular", "span", "loss")
# The ``loss`` ranking runs the whole model once per block, so it reads at most this many calibration windows.
LOSS_WINDOWS = 8


@torch.no_grad()
def block_removal_scores(lifecycle: Lifecycle, inputs: list[BlockInputs], boundaries_too: bool = False,
                         sample_rows: int = 8192) -> tuple[list[float], list[torch.Tensor]]:
    """Per block, ShortGPT's block influence 1 - mean cos(x_in, x_out) over every token, and with
    ``boundaries_too`` a sample of token rows of the hidden states at every block boundary (for Gromov's
    spans; some 600 MB for 30 blocks of width 576, so only when asked). One dense forward."""
    inputs = copy_inputs(inputs)
    influence, boundaries = [], []

    def sample(hidden: list[torch.Tensor]) -> torch.Tensor:
        if not boundaries_too:
            return torch.empty(0)
        rows = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden])
        stride = max(1, rows.shape[0] // sample_rows)
        return rows[::stride].float().cpu()

    boundaries.append(sample([item.hidden for item in inputs]))

    def visit(index: int, block: nn.Module) -> None:
        outputs = run_block(block, inputs)
        cosines = [nn.functional.cosine_similarity(item.hidden.float(), out.float(), dim=-1) for item, out in zip(inputs, outputs)]
        influence.append(float(1 - torch.cat([c.reshape(-1) for c in cosines]).mean()))
        propagate(inputs, outputs)
        boundaries.append(sample(outputs))

    lifecycle.sweep("block influence", visit, write=False)
    return influence, boundaries


@torch.no_grad()
def block_skip_losses(model: nn.Module, blocks: nn.ModuleList, chunks: list[torch.Tensor], progress: bool = False) -> list[float]:
    """Per block, the mean next-token loss over the first ``LOSS_WINDOWS`` calibration windows with that
    block alone skipped (its output replaced by its input); the model runs where it lives."""
    from tqdm.auto import tqdm

    ids = torch.cat(list(chunks))[:LOSS_WINDOWS]
    ids = ids.to(next(model.parameters()).device)

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, (tuple, list)):
            return (hidden, *output[1:])
        return hidden

    losses = []
    for block in tqdm(blocks, desc="block skip losses", unit="block", disable=not progress):
        handle = block.register_forward_hook(skip, with_kwargs=True)
        try:
            losses.append(float(model(input_ids=ids, labels=ids, use_cache=False).loss))
        finally:
            handle.remove()
    return losses


def choose_blocks(kind: str, count: int, influence: list[float] | None = None, boundaries: list[torch.Tensor] | None = None,
                  losses: list[float] | None = None) -> list[int]:
    """``angular``: the ``count`` blocks of lowest influence; ``span``: the contiguous run of ``count`` blocks
    whose input and output are closest in angle; ``loss``: the ``count`` blocks whose skipping costs least."""
    if count == 0:
        return []
    if kind in ("angular", "loss"):
        scores = influence if kind == "angular" else losses
        return sorted(sorted(range(len(scores)), key=lambda i: scores[i])[:count])
    if kind == "span":
        def distance(start: int) -> float:
            cos = nn.functional.cosine_similarity(boundaries[start], boundaries[start + count], dim=-1).clamp(-1, 1)
            return float(torch.arccos(cos).mean() / torch.pi)

        start = min(range(len(boundaries) - count), key=distance)
        return list(range(start, start + count))
    raise LLMPruneError(f"unknown block score '{kind}' (use {', '.join(BLOCK_SCORES)})")


def removed_runs(removed: list[int]) -> list[tuple[int, int]]:
    """The removed blocks as (first, last) contiguous runs, in order."""
    runs: list[tuple[int, int]] = []
    for index in sorted(removed):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


@dataclass
class BridgeStatistics:
    """M^T M and M^T (L - O) over the calibration tokens, in float64 (d x d each)."""

    gram: torch.Tensor
    cross: torch.Tensor

    @classmethod
    def empty(cls, width: int, device) -> "BridgeStatistics":
        return cls(torch.zeros(width, width, dtype=torch.float64, device=device),
                   torch.zeros(width, width, dtype=torch.float64, device=device))

    def update(self, mlp_output: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        m = mlp_output.reshape(-1, mlp_output.shape[-1]).double()
        gap = (target - output).reshape(m.shape).double()
        self.gram.addmm_(m.t(), m)
        self.cross.addmm_(m.t(), gap)


def fit_bridge(stats: BridgeStatistics, damp: float) -> torch.Tensor:
    """T = I + (M^T M + damp * mean(diag) I)^-1 M^T (L - O): the least-squares bridge, damped towards I."""
    gram = stats.gram
    jitter = damp * float(gram.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return eye + torch.linalg.solve(gram + jitter * eye, stats.cross)


def fold_bridge(layer: nn.Module, bridge: torch.Tensor) -> None:
    """The layer's outputs y become y T: weight (outputs x inputs) T^T W, bias T^T b."""
    t = bridge.to(layer.weight.device)
    matrix = (t.t() @ weight_matrix(layer).double()).float()
    bias = None if layer.bias is None else (layer.bias.data.double() @ t).float()
    keep_inputs(layer, list(range(matrix.shape[1])), matrix, bias)


def bridge_unavailable(layout: FamilyLayout) -> str | None:
    """Why no bridge can be folded into this family's blocks (None: it can)."""
    if layout.mlp_consumer is None:
        return "its MLP has no single output layer to fold it into"
    if layout.mlp_output_norm:
        return f"its MLP output passes through {layout.mlp_output_norm} before the residual add"
    return None


@torch.no_grad()
def bridge_run(block: nn.Module, layout: FamilyLayout, inputs: list[BlockInputs], run: list[nn.Module], device,
               damp: float) -> tuple[list[torch.Tensor], dict]:
    """Fit and fold the bridge for the removed ``run`` of blocks that follows the kept ``block``: returns
    the kept block's corrected outputs and a report entry (the run's calibration error before and after,
    relative to the mean square of L)."""
    consumer = submodule(block, layout.mlp_consumer)
    captured: list[torch.Tensor] = []
    handle = consumer.register_forward_hook(lambda module, args, output: captured.append(block_output(output)))
    try:
        outputs = run_block(block, inputs)
    finally:
        handle.remove()
    if len(captured) != len(inputs):
        raise LLMPruneError(f"{layout.mlp_consumer} ran {len(captured)} times for {len(inputs)} calibration chunks")
    targets = [BlockInputs(out.clone(), item.args, item.kwargs) for out, item in zip(outputs, inputs)]
    for removed in run:  # the removed blocks are still whole: what they would have made of O
        resting = next(removed.parameters()).device
        removed.to(device)
        propagate(targets, run_block(removed, targets))
        removed.to(resting)
    stats = BridgeStatistics.empty(outputs[0].shape[-1], outputs[0].device)
    for m, out, target in zip(captured, outputs, targets):
        stats.update(m, out, target.hidden)
    del captured
    fold_bridge(consumer, fit_bridge(stats, damp))
    corrected = run_block(block, inputs)  # run again rather than O + M (T - I): exact in the model's dtype
    before = after = scale = 0.0
    for out, new, target in zip(outputs, corrected, targets):
        error, size = relative_error(out, target.hidden)
        before, scale = before + error, scale + size
        after += relative_error(new, target.hidden)[0]
    entry = {"error_before": before / scale if scale else None, "error_after": after / scale if scale else None}
    return corrected, entry
