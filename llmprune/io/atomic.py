"""Writing outputs atomically: a folder or a file appears complete or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import LLMPruneError


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing folder early, before any work is done."""
    target = Path(output_dir).expanduser()
    if target.exists() and not overwrite:
        raise LLMPruneError(f"output folder {target} already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise LLMPruneError(f"output path {target} exists and is not a folder")
    return target


def check_free_space(parent: Path, needed_bytes: int) -> None:
    parent = parent if parent.exists() else parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
        raise LLMPruneError(
            f"not enough space in {parent}: {free / 2**20:.0f} MiB free, about {needed_bytes / 2**20:.0f} MiB needed"
        )


def write_folder_atomically(target: Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """``fill(tmp)`` writes into a temporary sibling folder which is then renamed to ``target``.

    A failure (or Ctrl-C) leaves no half-written folder behind; an existing target is
    replaced only after the new one is complete.
    """
    target = check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        # mkdtemp (and the safetensors writer) create private files; a model folder should read like any other.
        tmp.chmod(0o755)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LLMPruneError(f"could not write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_file_atomically(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` to a temporary sibling of ``path`` and rename it into place."""
    return write_stream_atomically(path, lambda handle: handle.write(content.encode("utf-8") if isinstance(content, str) else content))


def write_stream_atomically(path: str | Path, fill: Callable[[BinaryIO], object]) -> Path:
    """``fill(handle)`` writes a temporary sibling of ``path`` (opened binary), renamed into place
    only if it returns; an exception (a failed check, Ctrl-C) removes it."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
