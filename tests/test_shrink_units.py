"""A new kind of unit is one class: registered by name, the options and the plan take it with no other change."""
from __future__ import annotations

import pytest

from llmprune.errors import LLMPruneError
from llmprune.structured.layouts import find_layout
from llmprune.structured.options import ShrinkOptions
from llmprune.structured.plan import make_plan, parse_units, unit_costs
from llmprune.structured.units import UNITS, Choice, Unit, register
from tests.test_shrink import build


class Toy(Unit):
    """Removes a tenth of every kept block's parameters, or nothing: a stand-in for a new kind of unit."""

    name = "toy"
    order = 1  # after whole blocks, before the filling MLP

    def choices(self, costs, accepted=None):
        return [Choice(), Choice(per_block=costs.block_params // 10)]

    def step(self, costs, kept, multiple_of, choices):
        return min(choice.per_block for choice in choices) * kept


@pytest.fixture
def toy():
    unit = register(Toy())
    try:
        yield unit
    finally:
        UNITS.pop(unit.name)


def test_an_unregistered_unit_is_refused_by_name():
    with pytest.raises(LLMPruneError, match="unknown unit 'toy'"):
        parse_units("mlp,toy")
    with pytest.raises(LLMPruneError, match="unknown unit 'toy'"):
        ShrinkOptions(units="toy").validate()


def test_a_unit_registered_in_one_class_is_taken_by_the_options_and_the_plan(toy):
    assert ShrinkOptions(units="mlp,toy").validate() == ("mlp", "toy")
    model = build("llama", layers=4)
    costs = unit_costs(model, find_layout(model))
    alone = make_plan(costs, 0.1, ("toy",), 8)
    assert alone.units == ("toy",)
    assert alone.removed_params == costs.blocks * (costs.block_params // 10)
    assert (alone.intermediate, alone.heads, alone.blocks_removed) == (costs.intermediate, costs.heads, 0)

    mlp_only = make_plan(costs, 0.3, ("mlp",), 8)
    mixed = make_plan(costs, 0.3, ("mlp", "toy"), 8)
    assert mixed.units == ("toy", "mlp")  # in the plan's order: the MLP fills what the toy leaves
    toy_share = costs.blocks * (costs.block_params // 10)
    mlp_share = costs.blocks * (costs.intermediate - mixed.intermediate) * costs.channel_params
    assert mixed.removed_params == toy_share + mlp_share
    assert mixed.intermediate > mlp_only.intermediate  # the toy took part of the ratio
    assert abs(mixed.reached - 0.3) <= 0.02
