"""Offline lm-eval tasks: deterministic data in the cache, the committed YAMLs, a run on a tiny model."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evaluate_helpers import tiny_llama, word_tokenizer
from llmprune.data import wikipedia_split
from llmprune.evaluate.harness import run_tasks
from llmprune.evaluate.tasks import OFFLINE_TASKS, lead_sentence, task_data_files, tasks_dir, topics

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


def test_committed_yamls_load_in_lm_eval(offline_cache):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / "eval" / "tasks"), include_defaults=False)
    assert tasks_dir() == REPO / "eval" / "tasks"
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)
    loaded = manager.load(list(OFFLINE_TASKS))["tasks"]
    sizes = {name.split(":")[-1]: len(list(task.test_docs())) for name, task in loaded.items()}
    assert sizes == {"wiki_ppl": len(wikipedia_split("test")), "rt_sentiment": 1000, "wiki_topic": len(wikipedia_split("test"))}


def test_offline_tasks_run_on_a_tiny_model(offline_cache):
    model, tokenizer = tiny_llama(), word_tokenizer()
    out = run_tasks(model, tokenizer, "wiki_ppl,rt_sentiment,wiki_topic", limit=4, batch_size=4)
    tasks = out["tasks"]
    assert set(tasks) == set(OFFLINE_TASKS)
    assert tasks["wiki_ppl"]["word_perplexity"] > 1 and tasks["wiki_ppl"]["samples"] == 4
    for name in ("rt_sentiment", "wiki_topic"):
        assert 0 <= tasks[name]["acc"] <= 1 and tasks[name]["samples"] == 4
    assert tasks["rt_sentiment"]["acc"] * 4 == int(tasks["rt_sentiment"]["acc"] * 4)  # a count of 4 answers
