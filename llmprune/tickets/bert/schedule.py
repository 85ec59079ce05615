"""Sparsity per IMP round.

``linear``: each round removes ``rate`` of the ORIGINAL weights (Chen et al.: 10%, 20%, ...
up to 90%). ``geometric``: each round removes ``rate`` of the REMAINING weights (Frankle &
Carbin: 20%, 36%, 48.8%, ...). The list holds the sparsity after each round 1..N (round 0
is the dense model and is not listed); with a target the last round lands on it exactly.
"""
from __future__ import annotations

import math

from ...errors import LLMPruneError

DEFAULT_RATE = {"linear": 0.10, "geometric": 0.20}
LINEAR_CAP = 0.90  # the linear schedule stops at 90% unless a target says otherwise


def sparsity_schedule(kind: str = "linear", rounds: int | None = None, target: float | None = None,
                      rate: float | None = None) -> list[float]:
    if kind not in DEFAULT_RATE:
        raise LLMPruneError(f"unknown schedule '{kind}' (use linear or geometric)")
    rate = DEFAULT_RATE[kind] if rate is None else rate
    if not 0 < rate < 1:
        raise LLMPruneError(f"the pruning rate must be between 0 and 1 (got {rate})")
    if target is not None and not 0 < target < 1:
        raise LLMPruneError(f"--target-sparsity must be between 0 and 1 (got {target})")
    if rounds is not None and rounds < 1:
        raise LLMPruneError(f"--rounds must be at least 1 (got {rounds})")

    def after(r: int) -> float:
        # rounded to 1e-9 so 3 * 0.1 is 0.3 and masks count the weights one expects
        value = r * rate if kind == "linear" else 1 - (1 - rate) ** r
        return round(value, 9)

    if target is None:
        if rounds is None:
            rounds = int(round(LINEAR_CAP / rate)) if kind == "linear" else 10
        levels = [after(r) for r in range(1, rounds + 1)]
        if levels[-1] >= 1:
            raise LLMPruneError(f"{rounds} rounds of {kind} pruning at {rate:g} would remove every weight")
        return levels
    needed = math.ceil(round(target / rate, 9)) if kind == "linear" else \
        math.ceil(round(math.log(1 - target) / math.log(1 - rate), 9))
    if rounds is not None and rounds < needed:
        raise LLMPruneError(
            f"the {kind} schedule at {rate:g} per round reaches only {after(rounds):.1%} in {rounds} rounds, "
            f"not the target {target:.1%} (it needs {needed} rounds; raise --rounds or the rate)"
        )
    levels = [min(after(r), target) for r in range(1, needed + 1)]
    levels[-1] = target
    return levels
