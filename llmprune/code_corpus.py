"""An offline code corpus: the Python standard library's own source files.

The protocol (``--calibration code``, ``--ppl code``, the ``code_next`` task):
- files: every ``*.py`` under the running interpreter's stdlib folder
  (``sysconfig.get_paths()["stdlib"]``), without ``site-packages`` and without test folders
  (``test``, ``tests``, ``idle_test``: their many deliberately broken or generated files are not
  typical code); files that are not UTF-8 are skipped;
- split by file name: a file is in the test split when the first 8 hex digits of the sha256 of its
  path relative to the stdlib folder (``/``-separated), read as an integer, are 0 mod 10; otherwise in
  train. A file's split therefore depends on its name alone, not on which other files this Python
  version has, so the split is the same wherever a file exists;
- a split's text: its files in the order of that hash, each as its source text, joined with blank
  lines, keeping whole files while the total stays within ``CODE_CHARS[split]`` characters (the budget
  keeps tokenising cheap).
The file set differs between Python versions; every report records the interpreter's version
(``versions.python``).
"""
from __future__ import annotations

import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path

from .errors import LLMPruneError

CODE = "code"
EXCLUDED_FOLDERS = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
TEST_BUCKETS = 10
# About the size of the bundled Wikipedia splits (4.4M / 0.5M characters).
CODE_CHARS = {"train": 4_000_000, "test": 1_000_000}


def stdlib_folder() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def file_key(relative: str) -> int:
    """The hash a file is split and ordered by (its relative path, '/'-separated)."""
    return int(hashlib.sha256(relative.encode("utf-8")).hexdigest()[:8], 16)


def split_of(relative: str) -> str:
    return "test" if file_key(relative) % TEST_BUCKETS == 0 else "train"


@lru_cache(maxsize=2)
def code_files(split: str, root: str | None = None) -> tuple[tuple[str, str], ...]:
    """(relative path, source text) of the split's files, in hash order."""
    if split not in ("train", "test"):
        raise LLMPruneError(f"unknown split '{split}' (use train or test)")
    folder = Path(root) if root else stdlib_folder()
    if not folder.is_dir():
        raise LLMPruneError(f"the Python standard library folder {folder} is missing; the code corpus needs it")
    found = []
    for path in folder.rglob("*.py"):
        relative = path.relative_to(folder).as_posix()
        if EXCLUDED_FOLDERS & set(relative.split("/")[:-1]) or split_of(relative) != split:
            continue
        try:
            found.append((relative, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    if not found:
        raise LLMPruneError(f"no Python source files for the code corpus's {split} split under {folder}")
    return tuple(sorted(found, key=lambda item: (file_key(item[0]), item[0])))


def code_text(split: str, root: str | None = None) -> str:
    """The split's text: whole files in hash order, up to the split's character budget."""
    pieces, size = [], 0
    for _, text in code_files(split, root):
        if size + len(text) > CODE_CHARS[split]:
            continue  # a file that does not fit; smaller ones later in the order may
        pieces.append(text)
        size += len(text) + 2
    return "\n\n".join(pieces)

