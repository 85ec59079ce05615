"""Statistics of one block's layer inputs, gathered by forward pre-hooks during the block's own forward.

Layers fed the same tensor (q/k/v, gate/up) share one statistics object. With ``on_sight`` each
layer is pruned the moment its full input has arrived (the fused single pass): layers later in the
block then see inputs already shaped by the pruned layers before them. ``BlockGathering`` adds the
routed experts of fused experts modules (``experts``), each from the tokens routed to it; members
of a per-expert ``nn.Linear`` list are ordinary layers whose inputs are already their routed rows.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

from torch import nn

from ..anatomy import PrunableWeight, expert_layout
from .experts import MAGNITUDE, ExpertPolicy, RoutedExperts


class BlockStatistics:
    """Hooks on one block's prunable weights: statistics per distinct input, and an action on sight."""

    def __init__(self, provider, weights: dict[str, PrunableWeight], on_sight: Callable[[str], None] | None = None):
        # ``provider`` is anything with new_statistics(columns, device) and update_statistics(stats, rows):
        # a pruning method, or a structured score.
        self.provider, self.weights, self.on_sight = provider, weights, on_sight
        self.stats: dict[str, Any] = {}
        self.tokens: dict[str, int] = {}  # input rows each layer saw (what a per-expert list reports)
        self.done: set[str] = set()
        # A tensor is recognised by its address while it is alive; only a weak reference is kept, so
        # each input is freed as soon as the block's own code drops it (holding them for the whole
        # call would keep every layer input of the block alive at once).
        self._seen_this_call: dict[tuple, tuple[weakref.ref, Any]] = {}
        self._handles = [weight.module.register_forward_pre_hook(self._make_hook(name)) for name, weight in weights.items()]

    def _make_hook(self, name: str) -> Callable:
        def hook(module, args):
            if name in self.done:
                return
            inputs = args[0]
            self.tokens[name] = self.tokens.get(name, 0) + inputs.numel() // max(inputs.shape[-1], 1)
            key = (inputs.data_ptr(), tuple(inputs.shape))
            seen = self._seen_this_call.get(key)
            if seen is None or seen[0]() is None:  # a new tensor (perhaps at a freed one's address)
                stats = self.stats.get(name)
                if stats is None:
                    stats = self.provider.new_statistics(inputs.shape[-1], inputs.device)
                flat = inputs.reshape(-1, inputs.shape[-1]).float()
                self.provider.update_statistics(stats, flat)
                self._seen_this_call[key] = (weakref.ref(inputs), stats)
            self.stats.setdefault(name, self._seen_this_call[key][1])
            if self.on_sight is not None:
                self.on_sight(name)

        return hook

    def end_call(self) -> None:
        self._seen_this_call.clear()

    def take(self, name: str) -> Any:
        """The statistics of ``name`` (None if it saw no input), released from this object."""
        self.done.add(name)
        return self.stats.pop(name, None)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class BlockGathering:
    """Every statistics hook of one block: per distinct input for its layers, per expert for its fused
    experts; ``prune`` (the fused single pass) acts on each weight the moment its input is complete."""

    def __init__(self, block: nn.Module, provider, weights: dict[str, PrunableWeight], policy: ExpertPolicy,
                 prune: Callable[[str, Any], None] | None = None):
        self.weights, self.policy = weights, policy
        layers = {name: weight for name, weight in weights.items() if not weight.fused}
        on_sight = None if prune is None else (lambda name: prune(name, self.layer_statistics(name)))
        self.layers = BlockStatistics(provider, layers, on_sight=on_sight)
        by_module: dict[int, dict[str, PrunableWeight]] = {}
        for name, weight in weights.items():
            if weight.fused:
                by_module.setdefault(id(weight.module), {})[name] = weight
        module_names = {id(module): name for name, module in block.named_modules()}
        self.experts: list[RoutedExperts] = []
        for group in by_module.values():
            module = next(iter(group.values())).module
            layout = expert_layout(module)
            self.experts.append(RoutedExperts(module_names[id(module)], module, layout, group, provider, policy, prune))

    def layer_statistics(self, name: str) -> Any:
        """A layer's statistics; a member of a per-expert list with too few tokens gets none (magnitude)."""
        stats = self.layers.take(name)
        weight = self.weights[name]
        if weight.expert is not None and self.policy.too_few(self.layers.tokens.get(name, 0)):
            return None
        return stats

    def remove(self) -> None:
        self.layers.remove()
        for experts in self.experts:
            experts.remove()

    def routing(self) -> dict[str, dict]:
        """Tokens per expert and which fell back, per experts module (fused) or per-expert list."""
        entry = {experts.name: experts.summary() for experts in self.experts}
        lists: dict[str, dict[int, int]] = {}
        for name, weight in self.weights.items():
            if weight.expert is not None and not weight.fused:
                prefix = name[: name.index(f".{weight.expert}.")] if f".{weight.expert}." in name else name
                seen = lists.setdefault(prefix, {})
                seen[weight.expert] = max(seen.get(weight.expert, 0), self.layers.tokens.get(name, 0))
        for prefix, seen in lists.items():
            tokens = [seen.get(e, 0) for e in range(max(seen) + 1)]
            fell_back = {str(e): MAGNITUDE for e, t in enumerate(tokens) if self.policy.too_few(t)}
            entry[prefix] = {"experts": len(tokens), "tokens": tokens, "fell_back": fell_back}
        return entry
