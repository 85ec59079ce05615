"""What the options of every lottery-ticket job share: name lists, the rewind point, YAML recipes.

Each domain's options are one dataclass beside it (``bert/imp_options.py``, ``scratch/lth_options.py``).
Defaults live in those dataclasses and nowhere else: the CLI derives its flags (and the defaults
``--help`` shows) from the fields, recipes (``configs/imp-*.yaml``, ``configs/lth-*.yaml``) name the
same fields, and ``validate()`` (called on construction) checks and normalises whatever filled them. Each field's ``help``
metadata is the flag's help text; ``flag`` renames a flag (``progress`` -> ``--no-progress``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import LLMPruneError
from ..options import from_recipe


def parse_name_list(value, allowed: tuple, what: str) -> list[str]:
    """A comma string or list of names, or all / none, in the canonical order of ``allowed``."""
    names = [str(v) for v in value] if isinstance(value, (list, tuple)) else \
        [v.strip() for v in str(value or "").split(",") if v.strip()]
    if names == ["all"]:
        return list(allowed)
    if names in (["none"], []):
        return []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise LLMPruneError(f"unknown {what} {', '.join(unknown)} (use {', '.join(allowed)}, all or none)")
    return [n for n in allowed if n in names]


def parse_rewind(spec: str) -> int:
    """0 for rewinding to the start (``pretrained`` / ``init``), K for ``step:K``."""
    if spec in ("pretrained", "init"):
        return 0
    if spec.startswith("step:") and spec[5:].isdigit() and int(spec[5:]) > 0:
        return int(spec[5:])
    raise LLMPruneError(f"unknown --rewind '{spec}' (use init, pretrained or step:K with K a positive step count)")


class RecipeMixin:
    """What a ticket job's options class shares: recipes, and ``validate()`` as soon as the options exist
    (it also normalises the name lists the runner reads)."""

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides):
        """A recipe's values, then ``overrides`` on top (what flags do on the command line)."""
        return from_recipe(cls, path, **overrides)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError
