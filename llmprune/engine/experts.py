"""Statistics of routed experts: each expert's from exactly the tokens its router sent to it.

A fused experts module (transformers 5) is called with every token's hidden state and the router's
top-k choice. One forward pre-hook on it sees both and, expert by expert, takes the rows routed to
that expert (what its gate and up projections multiply) and that expert's own intermediate
activations act(gate) * up on those rows (what its down projection multiplies; recomputed from the
expert's current weights, so in the fused single pass from its already pruned gate and up). A
routing weight scales an expert's output, not the inputs its weights multiply, so it plays no part.

An expert that receives fewer than ``min_tokens`` calibration tokens falls back (``ExpertPolicy``):
``all-tokens`` takes the statistics of every token that reached the experts module, run through that
expert as if it had been chosen; ``magnitude`` prunes it from its weights alone. ``statistics=
"all-tokens"`` gives every expert the all-tokens statistics. The report lists each expert's tokens
and which fell back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..anatomy import DOWN, GATE, UP, ExpertLayout, PrunableWeight
from ..errors import LLMPruneError
from ..options import EXPERT_FALLBACKS, EXPERT_STATISTICS, MIN_EXPERT_TOKENS, check_expert_options

# The choices are named in the torch-free options (the flags list them); here they are what the engine does.
ROUTED, ALL_TOKENS = EXPERT_STATISTICS
MAGNITUDE = EXPERT_FALLBACKS[1]


@dataclass(frozen=True)
class ExpertPolicy:
    """Where routed experts take their statistics from (the defaults of ``PruneOptions``)."""

    statistics: str = ROUTED
    min_tokens: int = MIN_EXPERT_TOKENS
    fallback: str = ALL_TOKENS

    def check(self) -> None:
        check_expert_options(self.statistics, self.min_tokens, self.fallback)

    def too_few(self, tokens: int) -> bool:
        """An expert with no token has no statistics of its own whatever the threshold."""
        return tokens < max(self.min_tokens, 1)

    def source(self, tokens: int) -> str:
        """Where a fused expert that received ``tokens`` calibration tokens takes its statistics from."""
        if self.statistics == ALL_TOKENS:
            return ALL_TOKENS
        return self.fallback if self.too_few(tokens) else ROUTED


class _AllTokensGathered(Exception):
    """Raised inside the experts module to end a block forward once its input is recorded."""


def routing_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(token rows x hidden, token rows x top-k expert indices) of an experts module's call."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    indices = next((v for v in list(args[1:]) + list(kwargs.values())
                    if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
    if hidden is None or indices is None:
        raise LLMPruneError(f"{type(module).__name__}: cannot find the hidden states and the router's expert indices of its call")
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat, indices.reshape(flat.shape[0], -1)


class RoutedExperts:
    """One fused experts module's statistics, expert by expert, from the rows routed to each.

    With ``prune`` (the fused single pass) each expert is finished inside the module's call: its
    gate and up pruned, its intermediates recomputed with them, its down pruned, its statistics
    dropped, before the module's own forward runs on the pruned weights. Without, the statistics
    accumulate over every call (chunks) until ``resolve`` decides each expert's source and ``take``
    hands them out, one expert at a time.
    """

    def __init__(self, name: str, module: nn.Module, layout: ExpertLayout, weights: dict[str, PrunableWeight],
                 provider, policy: ExpertPolicy, prune: Callable[[str, Any], None] | None = None):
        self.name, self.module, self.layout, self.provider, self.policy = name, module, layout, provider, policy
        self.prune = prune
        self.count = getattr(module, layout.input_projection).shape[0]
        # Which selected weights each expert has (--ignore may leave some out).
        self.inputs: list[list[str]] = [[] for _ in range(self.count)]
        self.outputs: list[str | None] = [None] * self.count
        for weight_name, weight in weights.items():
            part = weight_name.rsplit(".", 1)[-1]
            if part == DOWN:
                self.outputs[weight.expert] = weight_name
            elif part in (GATE, UP):
                self.inputs[weight.expert].append(weight_name)
        self.tokens = [0] * self.count
        self.sources: list[str | None] = [None] * self.count
        self.stats_in: dict[int, Any] = {}
        self.stats_out: dict[int, Any] = {}
        self.shared_in: Any = None  # all-tokens gate/up statistics (every expert sees the same rows)
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    # ------------------------------------------------------------ helpers

    def _new(self, columns: int, device) -> Any:
        return self.provider.new_statistics(columns, device)

    def _fold(self, stats: Any, rows: torch.Tensor) -> Any:
        if rows.shape[0] == 0:
            return stats
        if stats is None:
            stats = self._new(rows.shape[-1], rows.device)
        self.provider.update_statistics(stats, rows.float())
        return stats

    def _routed_rows(self, chosen: torch.Tensor, expert: int) -> torch.Tensor:
        return (chosen == expert).any(dim=1).nonzero().squeeze(1)

    # ------------------------------------------------------------ the hook

    def _hook(self, module, args, kwargs):
        flat, chosen = routing_inputs(module, args, kwargs)
        routed = [self._routed_rows(chosen, expert) for expert in range(self.count)]
        for expert, rows in enumerate(routed):
            self.tokens[expert] += int(rows.numel())
        if self.prune is None:
            if self.policy.statistics == ALL_TOKENS:
                self._accumulate_all_tokens(range(self.count), flat)
            else:
                for expert, rows in enumerate(routed):
                    self._accumulate(expert, flat[rows])
            return
        shared_all_tokens: list[Any] = []  # one all-tokens input statistic serves every expert that needs it
        for expert, rows in enumerate(routed):
            if self.sources[expert] is not None:
                continue  # finished in an earlier call
            source = self.policy.source(self.tokens[expert])
            self.sources[expert] = source
            x = None if source == MAGNITUDE else (flat[rows] if source == ROUTED else flat)
            if self.inputs[expert]:
                if source == ALL_TOKENS:
                    if not shared_all_tokens:
                        shared_all_tokens.append(self._fold(None, flat))
                    stats = shared_all_tokens[0]
                else:
                    stats = self._fold(None, x) if x is not None else None
                for weight_name in self.inputs[expert]:
                    self.prune(weight_name, stats)
                del stats
            if self.outputs[expert] is not None:
                stats = self._fold(None, self.layout.intermediate(module, expert, x)) if x is not None else None
                self.prune(self.outputs[expert], stats)
                del stats

    def _accumulate_all_tokens(self, experts, flat: torch.Tensor) -> None:
        """Every token through each of ``experts``: one input statistic they all share, their own outputs'."""
        if any(self.inputs[e] for e in experts):
            self.shared_in = self._fold(self.shared_in, flat)
        for expert in experts:
            if self.outputs[expert] is not None:
                self.stats_out[expert] = self._fold(self.stats_out.get(expert), self.layout.intermediate(self.module, expert, flat))

    def _accumulate(self, expert: int, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        if self.inputs[expert]:
            self.stats_in[expert] = self._fold(self.stats_in.get(expert), x)
        if self.outputs[expert] is not None:
            self.stats_out[expert] = self._fold(self.stats_out.get(expert), self.layout.intermediate(self.module, expert, x))

    # ------------------------------------------------------------ after an accumulating pass

    def resolve(self, rerun: Callable[[], None] | None = None) -> None:
        """Decide each expert's source; gather all-tokens statistics for those that fall back to them
        (``rerun`` runs the block over its inputs again; the hook stops each call at this module)."""
        if self.prune is not None:
            return
        for expert in range(self.count):
            self.sources[expert] = self.policy.source(self.tokens[expert])
        falling = [e for e in range(self.count) if self.sources[e] != ROUTED and self.policy.statistics == ROUTED]
        for expert in falling:  # the routed statistics of a fallen-back expert are not used
            self.stats_in.pop(expert, None)
            self.stats_out.pop(expert, None)
        wanted = [e for e in falling if self.sources[e] == ALL_TOKENS]
        if not wanted or rerun is None:
            return

        def gather(module, args, kwargs):
            flat, _ = routing_inputs(module, args, kwargs)
            self._accumulate_all_tokens(wanted, flat)
            raise _AllTokensGathered

        self._handle.remove()
        handle = self.module.register_forward_pre_hook(gather, with_kwargs=True)
        try:
            rerun()
        finally:
            handle.remove()

    def take(self, expert: int) -> tuple[Any, Any]:
        """(gate/up statistics, down statistics) of one expert, released from this object."""
        stats_in = self.stats_in.pop(expert, None)
        if stats_in is None and self.sources[expert] == ALL_TOKENS:
            stats_in = self.shared_in
        return stats_in, self.stats_out.pop(expert, None)

    def summary(self) -> dict:
        fell_back = {str(e): s for e, s in enumerate(self.sources) if s is not None and s != ROUTED
                     and self.policy.statistics == ROUTED}
        return {"experts": self.count, "tokens": list(self.tokens), "fell_back": fell_back}

    def remove(self) -> None:
        self._handle.remove()


def run_until_experts(block: nn.Module, inputs) -> None:
    """Run the block over its inputs while a hook ends each call inside its experts module."""
    for item in inputs:
        try:
            block(item.hidden, *item.args, **item.kwargs)
        except _AllTokensGathered:
            pass
