"""Mask bookkeeping: the global threshold, random masks, what counts as prunable, storage."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from llmprune.errors import LLMPruneError
from llmprune.tickets.bert.encoder import prunable_parameters
from llmprune.tickets.ticket_masks import (apply_masks, global_magnitude_masks, load_masks, random_masks, save_masks,
                                sparsity)


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def test_threshold_is_global_across_matrices():
    # "small" holds the 6 smallest magnitudes of all: a global threshold at 50% removes all
    # of it and nothing of "large"; a per-matrix threshold would remove half of each.
    params = {"small": torch.tensor([[0.1, -0.2, 0.3], [0.05, -0.15, 0.25]]),
              "large": torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.6]])}
    masks = global_magnitude_masks(params, 0.5)
    assert not masks["small"].any()
    assert masks["large"].all()
    masks = global_magnitude_masks(params, 0.25)  # 3 of 12: 0.05, 0.1, -0.15
    assert masks["small"].tolist() == [[False, True, True], [False, False, True]]
    assert sparsity(masks) == pytest.approx(0.25)


def test_pruned_weights_stay_pruned_in_later_rounds():
    params = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])}
    current = {"w": torch.tensor([False] + [True] * 9)}  # the largest weight was pruned earlier
    masks = global_magnitude_masks(params, 0.3, current)
    assert masks["w"].tolist() == [False, True, True, True, True, True, True, True, False, False]
    with pytest.raises(LLMPruneError, match="below the current"):
        global_magnitude_masks(params, 0.0, current)


def test_random_masks_exact_count_and_seeded():
    params = {"a": torch.zeros(10, 10), "b": torch.zeros(50)}
    first, again, other = random_masks(params, 0.4, 1), random_masks(params, 0.4, 1), random_masks(params, 0.4, 2)
    assert sum(int((~m).sum()) for m in first.values()) == 60
    assert all(torch.equal(first[k], again[k]) for k in params)
    assert not all(torch.equal(first[k], other[k]) for k in params)


def test_prunable_is_encoder_linears_and_pooler_only():
    model = tiny_classifier()
    names = set(prunable_parameters(model))
    expected_suffixes = ["attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                         "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight"]
    for layer in range(2):
        for suffix in expected_suffixes:
            assert f"bert.encoder.layer.{layer}.{suffix}" in names
    assert "bert.pooler.dense.weight" in names
    assert len(names) == 2 * 6 + 1
    assert not any("embeddings" in n or "classifier" in n or "LayerNorm" in n or n.endswith("bias") for n in names)


def test_apply_and_store_masks(tmp_path):
    model = tiny_classifier()
    params = prunable_parameters(model)
    masks = global_magnitude_masks(params, 0.7)
    apply_masks(model, masks)
    for name, p in params.items():
        assert torch.all(p[~masks[name]] == 0)
        assert torch.all(p[masks[name]] != 0)
    save_masks(masks, tmp_path / "m.pt")
    loaded = load_masks(tmp_path / "m.pt")
    assert set(loaded) == set(masks) and all(torch.equal(loaded[k], masks[k]) for k in masks)
    # stored bit-packed: much smaller than one byte per weight
    assert (tmp_path / "m.pt").stat().st_size < sum(m.numel() for m in masks.values()) / 4 + 4096
