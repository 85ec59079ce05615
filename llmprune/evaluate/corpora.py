"""Evaluation corpora: the bundled Wikipedia split, local files, and the papers' hub datasets.

WikiText-2, PTB and C4 follow the SparseGPT / Wanda evaluation code:
- ``wikitext2``: WikiText-2 raw, test split, documents joined with "\\n\\n";
- ``ptb``: Penn Treebank (text only), test split, sentences joined with " ";
- ``c4``: the first validation shard of allenai/c4 (en), its first 1100 documents joined with
  " ", and only the first 256 windows are scored.
Any other name that is not a file is tried as a hub dataset ('name' or 'name:config').
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..code_corpus import CODE
from ..data import WIKIPEDIA, load_text
from ..errors import LLMPruneError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json")


@dataclass(frozen=True)
class HubCorpus:
    """Where a paper's evaluation text lives on the hub and how the papers join it."""

    path: str
    config: str | None
    split: str
    field: str
    joiner: str
    data_files: dict | None = None
    first_records: int | None = None
    max_windows: int | None = None


HUB_CORPORA: dict[str, HubCorpus] = {
    "wikitext2": HubCorpus("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text", "\n\n"),
    "ptb": HubCorpus("ptb-text-only/ptb_text_only", "penn_treebank", "test", "sentence", " "),
    "c4": HubCorpus(
        "allenai/c4",
        None,
        "validation",
        "text",
        " ",
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        first_records=1100,
        max_windows=256,
    ),
}
ALIASES = {"wikitext-2": "wikitext2", "wikitext": "wikitext2", "wiki2": "wikitext2", "wikitext2": "wikitext2"}


def canonical_source(source: str) -> str:
    lowered = source.lower()
    return ALIASES.get(lowered, lowered if lowered in HUB_CORPORA else source)


def is_local(source: str) -> bool:
    return Path(source).expanduser().suffix in LOCAL_SUFFIXES


def corpus_key(source: str, split: str) -> tuple:
    """What identifies a corpus's text: a file's path, size and modification time, else its name."""
    if is_local(source):
        path = Path(source).expanduser().resolve()
        try:
            stat = path.stat()
        except OSError:
            return (str(path), None, None)
        return (str(path), stat.st_size, stat.st_mtime_ns)
    return (canonical_source(source), split)


def protocol_max_windows(source: str) -> int | None:
    corpus = HUB_CORPORA.get(canonical_source(source))
    return corpus.max_windows if corpus else None


def hub_offline() -> bool:
    """True when the user asked for offline mode (datasets then fails at once, or uses its cache)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint; without it datasets retries for ~25 s before failing."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _require_hub(source: str) -> None:
    # In offline mode datasets may still answer from its local cache, so let it try; it fails fast.
    if not hub_offline() and not hub_reachable():
        raise LLMPruneError(
            f"the dataset '{source}' needs the Hugging Face hub, which is not reachable; use 'wikipedia' or a "
            f"local .txt/.jsonl file (set HF_HUB_OFFLINE=1 to read a local datasets cache)"
        )


def _load_paper_corpus(name: str, split: str) -> str:
    import datasets

    corpus = HUB_CORPORA[name]
    # The papers score WikiText-2 and PTB on test and C4 on validation; 'test' means "the
    # held-out split of this corpus" so the default works for all three.
    use_split = corpus.split if split in ("test", corpus.split) else split
    _require_hub(name)
    try:
        ds = datasets.load_dataset(corpus.path, corpus.config, split=use_split, data_files=corpus.data_files)
    except Exception as exc:  # offline, gated, missing: datasets raises many types
        reason = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise LLMPruneError(
            f"cannot load '{name}' ({corpus.path}) from the hub: {type(exc).__name__} {reason}".rstrip()
            + "; use 'wikipedia' or a local .txt/.jsonl file offline"
        ) from None
    if corpus.first_records is not None:
        ds = ds.select(range(min(corpus.first_records, len(ds))))
    return corpus.joiner.join(ds[corpus.field])


def load_eval_text(source: str = WIKIPEDIA, split: str = "test") -> str:
    """The text to score: bundled 'wikipedia', 'code' (Python stdlib sources), 'wikitext2' / 'ptb' / 'c4', a local file, or a hub dataset."""
    name = canonical_source(source)
    if name in HUB_CORPORA:
        return _load_paper_corpus(name, split)
    if name in (WIKIPEDIA, CODE) or is_local(source) or Path(source).expanduser().exists():
        return load_text(source, split)
    _require_hub(source)
    return load_text(source, split)
