"""Pruning rules: which weights survive each round, as a ladder fixed before training starts.

``GlobalRule``: one magnitude threshold across every prunable tensor (Chen et al. for BERT;
Frankle & Carbin for deeper nets), reaching the listed sparsity after each round.
``LayerwiseRule``: each layer loses its own share of its SURVIVING weights per round
(Frankle & Carbin: 20% of each hidden layer, 10% of the output layer), never below a floor.
Both give masks that only shrink from round to round, one-shot masks at the same counts,
and per-layer shuffles of a mask for the random-mask controls.
"""
from __future__ import annotations

import torch

from ..errors import LLMPruneError
from .ticket_masks import Masks, global_magnitude_masks, random_masks


def shuffle_within_layers(masks: Masks, seed: int) -> Masks:
    """Each layer's surviving positions moved to random places: same count per layer, new pattern."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.flatten().cpu()  # masks live on the CPU, whatever device a stacked run trains on
        shuffled[name] = flat[torch.randperm(flat.numel(), generator=generator)].view(mask.shape).clone()
    return shuffled


def kept(masks: Masks) -> int:
    return sum(int(m.sum()) for m in masks.values())


class GlobalRule:
    def __init__(self, levels: list[float], random_matches_layers: bool = False):
        self.levels = list(levels)
        # BERT's random-prune control draws one global random mask; the LTH random-mask control
        # keeps the ticket's per-layer counts
        self.random_matches_layers = random_matches_layers

    @property
    def rounds(self) -> int:
        return len(self.levels)

    def masks(self, params: dict, round_index: int, current: Masks | None = None) -> Masks:
        """The mask of round ``round_index`` (1..rounds) from these magnitudes, inside ``current``."""
        return global_magnitude_masks(params, self.levels[round_index - 1], current)

    def random(self, params: dict, ticket: Masks, round_index: int, seed: int) -> Masks:
        if self.random_matches_layers:
            return shuffle_within_layers(ticket, seed)
        return random_masks(params, self.levels[round_index - 1], seed)


class LayerwiseRule:
    def __init__(self, sizes: dict[str, int], rates: dict[str, float], rounds: int | None, min_keep: int = 1):
        if min_keep < 1:
            raise LLMPruneError("layer-wise pruning keeps at least one weight per layer")
        self.sizes, self.rates, self.min_keep = dict(sizes), dict(rates), min_keep
        self.counts = [dict(sizes)]  # counts[r][layer]: weights kept after round r
        while rounds is None or len(self.counts) <= rounds:
            previous = self.counts[-1]
            if rounds is None and all(c <= min_keep for c in previous.values()):
                break
            self.counts.append({name: self._next(c, rates[name]) for name, c in previous.items()})
            if len(self.counts) > 10_000:
                raise LLMPruneError("the layer-wise schedule does not reach its floor; set --rounds")

    def _next(self, count: int, rate: float) -> int:
        if count <= self.min_keep:
            return count
        after = int(round(count * (1 - rate)))
        # tiny layers would otherwise stop shrinking (4 * 0.9 rounds back to 4)
        return max(self.min_keep, min(after, count - 1))

    @property
    def rounds(self) -> int:
        return len(self.counts) - 1

    @property
    def levels(self) -> list[float]:
        total = sum(self.sizes.values())
        return [1 - sum(c.values()) / total for c in self.counts[1:]]

    def masks(self, params: dict, round_index: int, current: Masks | None = None) -> Masks:
        out = {}
        for name, p in params.items():
            keep, size = self.counts[round_index][name], p.numel()
            layer_current = None if current is None else {name: current[name]}
            out[name] = global_magnitude_masks({name: p}, (size - keep) / size, layer_current)[name]
        return out

    def random(self, params: dict, ticket: Masks, round_index: int, seed: int) -> Masks:
        return shuffle_within_layers(ticket, seed)
