"""The interface every kind of structured unit implements, as ``PruningMethod`` is for pruning methods.

A unit is what ``shrink`` removes whole: an MLP intermediate channel, an attention head (or key/value
group), a decoder block. One unit kind, one file in this folder, one line in ``__init__.py``:

- plan arithmetic: ``costs`` (the parameters one unit holds, read from a block through the family's
  layout), ``choices`` (every setting it may take, for units that move in steps) or ``fill`` (the
  setting that takes the rest of the ratio, for the one unit that fills), ``imbalance`` (how far a
  setting is from the unit's fair share), ``step`` (the parameters its finest step is worth) and
  ``check`` (what makes the unit impossible for a model, before any work);
- finalize: ``config_edits`` (which config keys it writes, and their new values);
- for units inside a block (``WidthUnit``): ``consumer`` (the layer whose input statistics score it and
  whose kept columns are re-fitted), ``groups`` (which of the consumer's input columns move together,
  and how many groups go), ``remove`` (the surgery: rows of the producers, columns of the consumer,
  the modules' size attributes) and ``narrow`` (the same surgery keeping the first units, used on a
  meta-device copy to have transformers check the plan).

Family knowledge stays in ``layouts.py``: a unit reads layer names and sizes from the ``FamilyLayout``.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ...anatomy import weight_matrix
from ..layouts import FamilyLayout
from ..scores import InputStatistics, choose_units
from ..surgery import submodule


@dataclass
class UnitCosts:
    """Parameters one unit of each kind holds in one block, and the model's sizes (filled by each unit's ``costs``)."""

    blocks: int
    block_params: int
    intermediate: int  # 0: no MLP unit
    channel_params: int
    heads: int  # 0: no attention unit
    kv_heads: int
    head_dim: int
    q_head_params: int  # a query head's q rows, o columns and norm channels
    kv_head_params: int  # a key/value head's k and v rows and norm channels


@dataclass(frozen=True)
class Shape:
    """The sizes of a shrunk model: what a plan chose, what finalize writes into the config."""

    intermediate: int
    heads: int
    kv_heads: int
    removed_blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Choice:
    """One setting of one unit in a plan: the sizes it sets and the parameters it removes."""

    sizes: dict[str, int] = field(default_factory=dict)  # e.g. {"heads": 6, "kv_heads": 2}
    per_block: int = 0  # parameters removed from every kept block
    blocks: int = 0  # whole blocks removed

    @property
    def idle(self) -> bool:
        return not self.per_block and not self.blocks


@dataclass(frozen=True)
class PlanContext:
    """What a unit's ``imbalance`` sees of the combination being weighed."""

    ratio: float
    target: float  # parameters the ratio asks to remove
    units: tuple[str, ...]  # the mix, in plan order
    kept: int  # blocks kept by this combination
    removed_before: int  # parameters removed by the units before this one in the mix
    has_fill: bool  # a filling unit (the MLP) takes the rest of the ratio


@dataclass(frozen=True)
class Groups:
    """Which of a consumer's input columns go together, and how many groups ``remove`` is asked to drop."""

    columns: list[list[int]]
    remove: int
    clusters: list[int] | None = None  # groups removed evenly from every cluster (query heads per key/value group)
    producer_sq: torch.Tensor | None = None  # squared norms of the producer rows behind each column (some scores use them)


class Unit(ABC):
    """One kind of structured unit. Subclasses set ``name`` and ``order`` and implement the plan arithmetic."""

    name: ClassVar[str]
    order: ClassVar[int]  # place in a mix: whole blocks first, then attention, the filling unit last
    fills: ClassVar[bool] = False  # takes whatever share of the ratio the other units of the mix leave

    def costs(self, blocks: nn.ModuleList, layout: FamilyLayout) -> dict[str, int]:
        """The unit's sizes and parameters per unit (fields of ``UnitCosts``); {} when it has none."""
        return {}

    def check(self, costs: UnitCosts, multiple_of: int, choices: list[Choice] | None) -> None:
        """Raise ``LLMPruneError`` when this unit cannot move at all in this model."""

    def choices(self, costs: UnitCosts, accepted: list[Choice] | None = None) -> list[Choice]:
        """Every setting a stepping unit may take, the unchanged one first; ``accepted``: those the family
        accepts, when checked against transformers beforehand."""
        return [Choice()]

    def fill(self, costs: UnitCosts, remaining: float, kept: int, multiple_of: int) -> Choice | str:
        """A filling unit's setting that removes about ``remaining`` parameters over ``kept`` blocks, or why none fits."""
        raise NotImplementedError(f"unit '{self.name}' does not fill")

    def imbalance(self, choice: Choice, costs: UnitCosts, context: PlanContext) -> float:
        """How far ``choice`` is from this unit's fair share of the ratio (0 for the filling unit)."""
        return 0.0

    @abstractmethod
    def step(self, costs: UnitCosts, kept: int, multiple_of: int, choices: list[Choice]) -> int:
        """Parameters the unit's finest step removes when ``kept`` blocks stay."""

    def config_edits(self, config, layout: FamilyLayout, shape: Shape) -> list[tuple[str, Any]]:
        """(config key, new value) for the shrunk model, in the order they are written."""
        return []


class WidthUnit(Unit):
    """A unit inside every kept block: scored on one consumer's inputs, removed by narrowing layers."""

    @abstractmethod
    def consumer(self, layout: FamilyLayout) -> str:
        """The layer whose inputs are the unit's score inputs (and whose kept columns are re-fitted)."""

    @abstractmethod
    def changes(self, layout: FamilyLayout, shape: Shape, block: nn.Module) -> bool:
        """Whether the kept widths ``shape`` remove any of this unit from ``block``."""

    @abstractmethod
    def groups(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> Groups:
        """The consumer's input columns grouped as they go together, and how many groups go."""

    @abstractmethod
    def remove(self, block: nn.Module, layout: FamilyLayout, shape: Shape, removed: list[int], stats: InputStatistics | None,
               damp: float, record: dict) -> list[int]:
        """Drop groups ``removed`` (re-fitting the consumer when ``stats`` are given), note them in ``record``;
        returns the consumer's kept input columns."""

    @abstractmethod
    def narrow(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> None:
        """Narrow ``block`` to ``shape`` keeping the first units (no statistics): the plan's shapes, for checks."""

    def shrinker(self, block: nn.Module, layout: FamilyLayout, shape: Shape, score: str, compensate: bool, damp: float,
                 record: dict) -> Callable[[InputStatistics], list[int]]:
        """statistics of the consumer's inputs -> the units chosen, removed, and the consumer's kept columns."""
        def apply(stats: InputStatistics) -> list[int]:
            weight = weight_matrix(submodule(block, self.consumer(layout))).float()
            groups = self.groups(block, layout, shape)
            removed = choose_units(score, weight, stats, groups.columns, groups.remove, clusters=groups.clusters,
                                   producer_sq=groups.producer_sq, damp=damp)
            return self.remove(block, layout, shape, removed, stats if compensate else None, damp, record)

        return apply


def writable(config, key: str) -> bool:
    """Not a computed property of the config class (Falcon's head_dim is one)."""
    return not isinstance(getattr(type(config), key, None), property)


def edited_config(config, edits: list[tuple[str, Any]]):
    """(a copy of ``config`` with ``edits`` written, key -> [before, after] of what changed)."""
    config = copy.deepcopy(config)
    changes: dict[str, list] = {}
    for key, value in edits:
        before = getattr(config, key, None)
        if before != value:
            changes[key] = [before, value]
            setattr(config, key, value)
    return config, changes
