"""Statistics of one block's layer inputs, gathered by forward pre-hooks during the block's own forward.

Layers fed the same tensor (q/k/v, gate/up) share one statistics object. With ``prune_on_sight``
each layer is pruned the moment its full input has arrived (the fused single pass): layers later in
the block then see inputs already shaped by the pruned layers before them.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

from ..anatomy import PrunableWeight


class BlockStatistics:
    """Hooks on one block's prunable weights: statistics per distinct input, and an action on sight."""

    def __init__(self, provider, weights: dict[str, PrunableWeight], on_sight: Callable[[str], None] | None = None):
        # ``provider`` is anything with new_statistics(columns, device) and update_statistics(stats, rows):
        # a pruning method, or a structured score.
        self.provider, self.weights, self.on_sight = provider, weights, on_sight
        self.stats: dict[str, Any] = {}
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
