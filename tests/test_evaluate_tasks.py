"""Offline lm-eval tasks: deterministic data in the cache, the committed YAMLs, a run on a tiny model."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from evaluate_helpers import tiny_llama, word_tokenizer
from llmprune.data import wikipedia_split
from llmprune.evaluate.harness import run_tasks
from llmprune.evaluate.tasks import (
    NEXT_CHOICES,
    OFFLINE_TASKS,
    lastword_passage,
    lead_sentence,
    split_sentences,
    task_data_files,
    tasks_dir,
    topics,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "llmprune-cache"
    monkeypatch.setenv("LLMPRUNE_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return cache


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_task_data_are_generated_once_deterministically(offline_cache, tmp_path, monkeypatch):
    first = {task: task_data_files(task) for task in OFFLINE_TASKS}
    for files in first.values():
        for path in files.values():
            assert Path(path).is_absolute() and str(offline_cache) in path
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "elsewhere"))
    for task in OFFLINE_TASKS:
        again = task_data_files(task)
        for split, path in again.items():
            assert Path(path).read_bytes() == Path(first[task][split]).read_bytes(), (task, split)


def test_task_contents(offline_cache):
    test_articles = wikipedia_split("test")
    wiki_ppl = read_jsonl(task_data_files("wiki_ppl")["test"])
    assert [d["text"] for d in wiki_ppl] == [a["extract"] for a in test_articles]

    rt = {split: read_jsonl(path) for split, path in task_data_files("rt_sentiment").items()}
    assert Counter(d["label"] for d in rt["test"]) == {0: 500, 1: 500}
    assert Counter(d["label"] for d in rt["train"]) == {0: 500, 1: 500}
    assert not {d["text"] for d in rt["test"]} & {d["text"] for d in rt["train"]}

    names = topics()
    assert len(names) == 12
    topic = read_jsonl(task_data_files("wiki_topic")["test"])
    assert len(topic) == len(test_articles)
    for doc, article in zip(topic, test_articles):
        assert doc["choices"] == names and names[doc["label"]] == article["topic"]
        assert " ".join(article["extract"].split()).startswith(doc["sentence"])


def test_lead_sentence():
    assert lead_sentence("Paris is the capital. It is big.") == "Paris is the capital."
    assert lead_sentence("J. R. R. Tolkien was a writer. He taught.") == "J. R. R. Tolkien was a writer."
    assert lead_sentence("The city (founded c. 1500 BC) grew. Later.") == "The city (founded c. 1500 BC) grew."
    assert len(lead_sentence("word " * 500)) <= 400


def test_split_sentences():
    text = "J. R. R. Tolkien was a writer.  He taught at Oxford (c. 1925). Was he? \"Yes\" it is said"
    assert split_sentences(text) == [
        "J. R. R. Tolkien was a writer.", "He taught at Oxford (c. 1925).", "Was he?", '"Yes" it is said',
    ]
    assert split_sentences("") == []


def test_lastword_passage():
    # The longest whole-sentence prefix whose last word occurred before: the first two sentences.
    text = "The river Avon flows west. Many towns stand on the Avon. It is long."
    assert lastword_passage(text) == ("The river Avon flows west. Many towns stand on the", "Avon")
    assert lastword_passage("Cats sleep. Dogs bark.") is None  # no last word repeats
    assert lastword_passage("Au is gold. Its symbol is Au.") == ("Au is gold. Its symbol is", "Au")
    assert lastword_passage("A is a vowel. We say A.") is None  # one letter is not a target
    assert lastword_passage("It is 1984. It was 1984.") is None  # nor a number
    assert lastword_passage("A red-brick house. The house.") == ("A red-brick house. The", "house")
    assert lastword_passage("The brick. A red-brick.") is None  # part of a hyphenated word does not count


def test_wiki_next_documents(offline_cache):
    files = task_data_files("wiki_next")
    train_titles = {a["title"] for a in wikipedia_split("train")}
    test_titles = {a["title"] for a in wikipedia_split("test")}
    docs = {split: read_jsonl(path) for split, path in files.items()}
    assert set(docs) == {"test", "train"} and len(docs["test"]) > 800
    for split, titles in (("test", test_titles), ("train", train_titles)):
        answers = {d["title"]: d["choices"][d["label"]] for d in docs[split]}
        for doc in docs[split]:
            assert doc["title"] in titles and set(doc["sources"]) <= titles  # never across splits
            assert len(doc["choices"]) == len(doc["sources"]) == NEXT_CHOICES
            assert doc["sources"][doc["label"]] == doc["title"]
            others = [s for i, s in enumerate(doc["sources"]) if i != doc["label"]]
            assert doc["title"] not in others and len(set(others)) == NEXT_CHOICES - 1  # other articles
            assert len(set(doc["choices"])) == NEXT_CHOICES  # distractors differ from the answer
            for source, choice in zip(doc["sources"], doc["choices"]):
                assert answers[source] == choice  # each choice is that article's second sentence
    articles = {a["title"]: a for a in wikipedia_split("test")}
    for doc in docs["test"][:50]:
        assert split_sentences(articles[doc["title"]]["extract"])[:2] == [doc["context"], doc["choices"][doc["label"]]]
    # Answer positions are balanced in every prefix a --limit takes; so, nearly, is the answer's
    # length rank, so "pick the longest" or "the shortest" scores chance there too.
    for prefix in (8, 200, len(docs["test"]) // 4 * 4):
        assert Counter(d["label"] for d in docs["test"][:prefix]) == {k: prefix // 4 for k in range(NEXT_CHOICES)}
    for prefix in (200, len(docs["test"])):
        ranks = Counter(sum(len(c) < len(d["choices"][d["label"]]) for c in d["choices"]) for d in docs["test"][:prefix])
        assert all(abs(ranks[r] / prefix - 1 / NEXT_CHOICES) < 0.03 for r in range(NEXT_CHOICES)), (prefix, ranks)
    spread = sorted(max(map(len, d["choices"])) - min(map(len, d["choices"])) for d in docs["test"])
    assert spread[len(spread) // 2] <= 10  # similar lengths: median spread in characters


def test_wiki_lastword_documents(offline_cache):
    docs = {split: read_jsonl(path) for split, path in task_data_files("wiki_lastword").items()}
    test_articles = {a["title"]: a for a in wikipedia_split("test")}
    train_titles = {a["title"] for a in wikipedia_split("train")}
    assert len(docs["test"]) > 300 and {d["title"] for d in docs["train"]} <= train_titles
    for doc in docs["test"]:
        article = " ".join(test_articles[doc["title"]]["extract"].split())
        assert article.startswith(f"{doc['context']} {doc['target']}")
        assert re.search(rf"\b{re.escape(doc['target'])}\b", doc["context"])  # it occurred before
        assert len(doc["context"]) + 1 + len(doc["target"]) <= 600


def test_committed_yamls_load_in_lm_eval(offline_cache):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / "eval" / "tasks"), include_defaults=False)
    assert tasks_dir() == REPO / "eval" / "tasks"
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)
    loaded = manager.load(list(OFFLINE_TASKS))["tasks"]
    by_name = {name.split(":")[-1]: task for name, task in loaded.items()}
    sizes = {name: len(list(task.test_docs())) for name, task in by_name.items()}
    counts = {task: len(read_jsonl(task_data_files(task)["test"])) for task in ("wiki_next", "wiki_lastword", "code_next", "code_name")}
    assert sizes == {"wiki_ppl": len(wikipedia_split("test")), "rt_sentiment": 1000, "wiki_topic": len(wikipedia_split("test")),
                     **counts}
    wiki_next, wiki_lastword = by_name["wiki_next"], by_name["wiki_lastword"]
    first = next(iter(wiki_next.test_docs()))
    assert wiki_next.doc_to_text(first) == first["context"] and wiki_next.doc_to_choice(first) == first["choices"]
    first = next(iter(wiki_lastword.test_docs()))
    assert wiki_lastword.doc_to_text(first) == first["context"] and wiki_lastword.doc_to_target(first) == " " + first["target"]
    code_next = by_name["code_next"]
    first = next(iter(code_next.test_docs()))
    # The context ends with the line's indentation, and the choice follows it with no space between.
    assert code_next.doc_to_text(first) == first["context"] and code_next.config.target_delimiter == ""
    code_name = by_name["code_name"]
    first = next(iter(code_name.test_docs()))
    # The target (the name and the character before it) follows the context directly.
    assert code_name.doc_to_text(first) == first["context"] and code_name.doc_to_target(first) == first["target"]
    assert code_name.config.target_delimiter == "" and code_name.config.output_type == "loglikelihood"


def test_offline_tasks_run_on_a_tiny_model(offline_cache):
    model, tokenizer = tiny_llama(), word_tokenizer()
    out = run_tasks(model, tokenizer, ",".join(OFFLINE_TASKS), limit=4, batch_size=4)
    tasks = out["tasks"]
    assert set(tasks) == set(OFFLINE_TASKS)
    assert tasks["wiki_ppl"]["word_perplexity"] > 1 and tasks["wiki_ppl"]["samples"] == 4
    for name in ("rt_sentiment", "wiki_topic", "wiki_next", "wiki_lastword"):
        assert 0 <= tasks[name]["acc"] <= 1 and tasks[name]["samples"] == 4
    assert 0 <= tasks["wiki_next"]["acc_norm"] <= 1
    assert 1 < tasks["wiki_lastword"]["perplexity"] < float("inf")  # exp(mean NLL of the 4 target words)
    assert 0 <= tasks["code_name"]["acc"] <= 1 and 1 < tasks["code_name"]["perplexity"] < float("inf")
    assert tasks["rt_sentiment"]["acc"] * 4 == int(tasks["rt_sentiment"]["acc"] * 4)  # a count of 4 answers


def test_lm_eval_limit_turns_whole_floats_into_counts_and_keeps_fractions():
    from llmprune.evaluate.harness import lm_eval_limit

    assert lm_eval_limit(200.0) == 200 and isinstance(lm_eval_limit(200.0), int)
    assert lm_eval_limit(1.0) == 1 and isinstance(lm_eval_limit(1.0), int)
    assert lm_eval_limit(0.25) == 0.25 and lm_eval_limit(None) is None
