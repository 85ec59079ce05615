"""``--allocation auto``: prune with each candidate allocation, keep the one with the lowest held-out loss.

The candidates are uniform, OWL at two lambdas and depth ramps of two spreads. Each is pruned in full
from the dense weights (restored between candidates) and scored by the next-token loss on held-out
calibration windows: windows from the calibration source's train split drawn with seed + 1, or the
last windows of given token ids, which then calibrate nothing. Never the test split.
"""
from __future__ import annotations

import torch

from ..anatomy import LayerSelection, model_weights
from .. import calibration
from ..engine import Lifecycle, prune_model
from ..methods import PruningMethod, SparsityTarget
from .owl import OWL
from .ramp import DepthRamp
from .uniform import Uniform

# OWL at these lambdas, and ramps whose first and last blocks differ by these spreads (the step is
# spread / (blocks - 1), so the grid means the same for a 12-block and an 80-block model).
AUTO_OWL_LAMBDAS = (0.08, 0.15)
AUTO_RAMP_SPREADS = (0.1, 0.2)


def auto_candidates(blocks: int, owl_m: float) -> list[tuple[str, object]]:
    """(label, allocation) for every candidate ``--allocation auto`` compares, uniform first."""
    candidates: list[tuple[str, object]] = [("uniform", Uniform())]
    candidates += [(f"owl lambda={lam}", OWL(owl_m, lam)) for lam in AUTO_OWL_LAMBDAS]
    if blocks > 1:
        candidates += [(f"depth ramp spread={spread}", DepthRamp(spread / (blocks - 1))) for spread in AUTO_RAMP_SPREADS]
    return candidates


@torch.no_grad()
def heldout_loss(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Mean next-token negative log-likelihood of ``model`` on ``windows`` (what the candidates are ranked by)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(loss), count + batch[:, 1:].numel()
    return total / count


def split_heldout(tokenizer, source: str | calibration.CalibrationText, windows: int, seqlen: int, seed: int, chunks: list[torch.Tensor],
                  calibration_ids: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(held-out windows, calibration chunks that remain): see the module docstring for where they come from."""
    if calibration_ids is None:
        return calibration.calibration_batch(tokenizer, source, windows, seqlen, seed + 1), chunks
    count = min(windows, max(1, calibration_ids.shape[0] // 4))
    if calibration_ids.shape[0] > count:
        chunks = list(torch.tensor_split(calibration_ids[:-count], len(chunks)))
    return calibration_ids[-count:], chunks


class AutoAllocation:
    """The allocation whose ``allocate`` prunes with every candidate first, then allocates as the best one."""

    name = "allocation_auto"

    def __init__(self, method: PruningMethod, chunks: list[torch.Tensor], heldout: torch.Tensor, owl_m: float,
                 progress: bool = True):
        self.method, self.chunks, self.heldout, self.owl_m, self.progress = method, chunks, heldout, owl_m, progress

    def allocate(self, lifecycle: Lifecycle, dense_inputs, target: SparsityTarget,
                 selection: LayerSelection) -> tuple[dict, list[SparsityTarget]]:
        """({"allocation_auto": the scores and the choice, + the chosen allocation's entry}, its block targets)."""
        model = lifecycle.model
        weights = model_weights(model, selection)
        original = {name: weight.matrix().clone() for name, weight in weights.items()}
        quiet = Lifecycle(model, lifecycle.home, lifecycle.device, False, lifecycle.experts)
        scores = []
        for label, candidate in auto_candidates(len(lifecycle.blocks), self.owl_m):
            prune_model(quiet, self.method, target, self.chunks, selection, allocation=candidate)
            loss = heldout_loss(model, self.heldout)
            scores.append((label, round(loss, 6), candidate))
            if self.progress:
                print(f"llmprune: allocation {label}: held-out loss {loss:.4f}", flush=True)
            for name, weight in weights.items():
                weight.set_matrix(original[name])
        chosen, _, allocation = min(scores, key=lambda score: score[1])
        entries, targets = allocation.allocate(lifecycle, dense_inputs, target, selection)
        entries[self.name] = {
            "chosen": chosen,
            "heldout_windows": int(self.heldout.shape[0]),
            "candidates": [{"candidate": label, "heldout_loss": loss} for label, loss, _ in scores],
        }
        return entries, targets
