"""Schedule arithmetic: linear (of the original) and geometric (of the remaining)."""
import pytest

from llmprune.errors import LLMPruneError
from llmprune.tickets.bert.schedule import sparsity_schedule


def test_linear_ten_percent_of_original_per_round():
    assert sparsity_schedule("linear", rounds=5) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert sparsity_schedule("linear") == pytest.approx([0.1 * r for r in range(1, 10)])  # to 90%
    assert sparsity_schedule("linear", target=0.5) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert sparsity_schedule("linear", rounds=6, target=0.55) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.55])


def test_geometric_fraction_of_remaining_per_round():
    assert sparsity_schedule("geometric", rounds=3, rate=0.2) == pytest.approx([0.2, 0.36, 0.488])
    levels = sparsity_schedule("geometric", target=0.8, rate=0.2)
    assert len(levels) == 8 and levels[-1] == 0.8  # 1 - 0.8**7 = 0.790 < 0.8 <= 1 - 0.8**8
    assert levels[-2] == pytest.approx(1 - 0.8 ** 7)


def test_unreachable_target_is_an_error():
    with pytest.raises(LLMPruneError, match="reaches only 30.0%.*needs 5 rounds"):
        sparsity_schedule("linear", rounds=3, target=0.5)
    with pytest.raises(LLMPruneError, match="geometric"):
        sparsity_schedule("geometric", rounds=2, target=0.5, rate=0.2)
    with pytest.raises(LLMPruneError):
        sparsity_schedule("linear", rounds=12)  # 120% of the weights
    with pytest.raises(LLMPruneError):
        sparsity_schedule("linear", target=1.0)
    with pytest.raises(LLMPruneError, match="unknown schedule"):
        sparsity_schedule("cubic", rounds=2)
