"""Perplexity: the tool against a direct token-by-token sum, window cutting, batching, caching."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evaluate_helpers import random_words, tiny_llama, word_tokenizer
from llmprune.errors import LLMPruneError
from llmprune.evaluate import perplexity
from llmprune.evaluate.perplexity import _FAST_PATH_OK, corpus_tokens


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def write_words(path, count: int, seed: int = 0):
    path.write_text(random_words(count, seed), encoding="utf-8")
    return path


def direct_ppl(model, ids: list[int], seqlen: int) -> tuple[float, int]:
    """Independent reference: one window at a time, one predicted token at a time, float64 sum."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - seqlen + 1, seqlen):
            window = torch.tensor([ids[start : start + seqlen]])
            logits = model(input_ids=window).logits[0].double()
            for position in range(seqlen - 1):
                log_probs = F.log_softmax(logits[position], dim=-1)
                total -= float(log_probs[ids[start + position + 1]])
                count += 1
    return math.exp(total / count), count


def test_perplexity_equals_token_by_token_sum(model, tokenizer, tmp_path):
    text_file = write_words(tmp_path / "words.txt", 7 * 24 + 5)  # 7 windows and a 5-token remainder
    result = perplexity(model, tokenizer, source=str(text_file), seqlen=24, batch_size=3, progress=False)
    ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 * 24 + 5
    expected, predicted = direct_ppl(model, ids, 24)
    assert result.windows == 7 and result.predicted == predicted == 7 * 23
    assert result.ppl == pytest.approx(expected, rel=1e-4)
    assert result.nll == pytest.approx(math.log(expected), rel=1e-4)


def test_models_that_post_process_logits_use_the_full_forward(tokenizer, tmp_path):
    # Logit soft-capping (Gemma 2) breaks "hidden states through lm_head = logits"; the tool
    # must notice and still agree with the direct sum.
    import transformers

    torch.manual_seed(1)
    config = transformers.Gemma2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, final_logit_softcapping=2.0,
    )
    gemma = transformers.Gemma2ForCausalLM(config).eval()
    text_file = write_words(tmp_path / "words.txt", 3 * 16)
    result = perplexity(gemma, tokenizer, source=str(text_file), seqlen=16, batch_size=2, progress=False)
    assert _FAST_PATH_OK[gemma] is False
    ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    assert result.ppl == pytest.approx(direct_ppl(gemma, ids, 16)[0], rel=1e-4)


def test_remainder_is_dropped_and_windows_are_limited(model, tokenizer, tmp_path):
    exact = write_words(tmp_path / "exact.txt", 5 * 20, seed=3)
    longer = tmp_path / "longer.txt"
    longer.write_text(exact.read_text() + " " + random_words(19, seed=4), encoding="utf-8")  # 19 < one window
    a = perplexity(model, tokenizer, source=str(exact), seqlen=20, progress=False)
    b = perplexity(model, tokenizer, source=str(longer), seqlen=20, progress=False)
    assert (a.windows, a.tokens, a.predicted) == (5, 100, 5 * 19)
    assert b.windows == 5 and b.ppl == pytest.approx(a.ppl, rel=1e-6)
    first_two = perplexity(model, tokenizer, source=str(exact), seqlen=20, max_windows=2, progress=False)
    assert (first_two.windows, first_two.tokens) == (2, 40)
    ids = tokenizer(exact.read_text(), add_special_tokens=False)["input_ids"][:40]
    assert first_two.ppl == pytest.approx(direct_ppl(model, ids, 20)[0], rel=1e-4)
    with pytest.raises(LLMPruneError, match="too short"):
        perplexity(model, tokenizer, source=str(exact), seqlen=101, progress=False)


def test_batch_size_does_not_change_the_result(model, tokenizer, tmp_path):
    text_file = write_words(tmp_path / "words.txt", 5 * 16, seed=5)
    one = perplexity(model, tokenizer, source=str(text_file), seqlen=16, batch_size=1, progress=False)
    many = perplexity(model, tokenizer, source=str(text_file), seqlen=16, batch_size=4, progress=False)
    assert many.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert one.tokens_per_s > 0 and one.seconds > 0


def test_tokenised_corpus_is_cached_until_the_file_changes(tokenizer, tmp_path):
    text_file = write_words(tmp_path / "words.txt", 40, seed=6)
    first = corpus_tokens(tokenizer, str(text_file))
    assert corpus_tokens(tokenizer, str(text_file)) is first
    text_file.write_text(random_words(41, seed=7), encoding="utf-8")
    changed = corpus_tokens(tokenizer, str(text_file))
    assert changed is not first and changed.numel() == 41


def test_bundled_wikipedia_split_is_the_default_source(model, tokenizer):
    result = perplexity(model, tokenizer, seqlen=32, max_windows=2, progress=False)
    assert (result.source, result.split, result.windows) == ("wikipedia", "test", 2)
    assert math.isfinite(result.ppl) and result.ppl > 1
