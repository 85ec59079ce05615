"""Corpora, the bundled Wikipedia split rule, and calibration windows."""
import pytest
import torch

from llmprune import data
from llmprune.errors import LLMPruneError

from tests.conftest import tiny_tokenizer


def test_wikipedia_split_rule():
    articles = data.wikipedia_articles()
    titles = [a["title"] for a in articles]
    assert titles == sorted(titles)
    test, train = data.wikipedia_split("test"), data.wikipedia_split("train")
    assert len(test) + len(train) == len(articles)
    assert test[0] is articles[0] and test[1] is articles[10] and train[0] is articles[1]
    assert data.wikipedia_text("test").startswith(articles[0]["extract"] + "\n\n" + articles[10]["extract"])


def test_tokenising_in_pieces_at_paragraph_breaks():
    tokenizer = tiny_tokenizer()
    text = "\n\n".join(f"the cat sat on the mat {i % 3 * 'and the dog ran'}" for i in range(200))
    whole = data.tokenize_corpus(tokenizer, text)
    pieces = data.tokenize_corpus(tokenizer, text, piece_chars=300)
    assert torch.equal(whole, pieces)  # a word-level tokenizer has no cross-boundary merges


def test_calibration_windows_are_reproducible_slices():
    ids = torch.arange(1000)
    first = data.calibration_windows(ids, nsamples=8, seqlen=50, seed=3)
    assert torch.equal(first, data.calibration_windows(ids, nsamples=8, seqlen=50, seed=3))
    assert not torch.equal(first, data.calibration_windows(ids, nsamples=8, seqlen=50, seed=4))
    assert ((first[:, 1:] - first[:, :-1]) == 1).all()  # each window is a contiguous slice


def test_too_short_for_a_window():
    with pytest.raises(LLMPruneError, match="too short"):
        data.calibration_windows(torch.arange(10), nsamples=1, seqlen=11)


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert data.load_text(str(path)) == "one\n\ntwo"
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(LLMPruneError, match="no text field"):
        data.load_text(str(bad))
