"""Flags derived one-to-one from an options dataclass (``llmprune.options.option`` fields).

Each field gives its flag's name (or ``flag`` metadata), type, help, choices, metavar, group and
the default ``--help`` shows (``shown`` metadata, else the dataclass default). Every flag parses to
None when not typed, so the order of precedence is: the dataclass default, then the ``--config``
recipe, then the flags actually typed (``options_from_args``).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _value_type(f):
    kind = str(f.type)
    if kind.startswith("list"):
        return _comma_list
    if "float" in kind:
        return float
    if "int" in kind:
        return int
    return str


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, first: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """``--config`` and one flag per field of ``cls`` (``first`` ones first, ``skip`` ones not at all)."""
    parser.add_argument("--config", help="YAML recipe whose keys are these option names; flags typed here override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in sorted(fields(cls), key=lambda f: f.name not in first):
        if f.name in skip:
            continue
        group_name = f.metadata.get("group")
        target = parser if group_name is None else (groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name)))
        default, help_text = _default(f), f.metadata.get("help", "")
        if isinstance(default, bool):
            # a switch that flips the default: --overwrite sets True, --no-progress sets progress False
            target.add_argument(_flag(f), dest=f.name, action="store_const", const=not default, default=None,
                                help=help_text.replace("%", "%%"))
            continue
        extra = {key: f.metadata[key] for key in ("choices", "metavar") if f.metadata.get(key) is not None}
        target.add_argument(_flag(f), dest=f.name, type=_value_type(f), default=None,
                            help=f"{help_text} (default: {f.metadata.get('shown', _shown(default))})".replace("%", "%%"),
                            **extra)


def options_from_args(cls, args: argparse.Namespace):
    """The options object: dataclass defaults < the ``--config`` recipe < typed flags (a typed flag also
    replaces the recipe keys it conflicts with, e.g. --pattern a recipe's sparsity)."""
    from ..options import from_recipe

    typed = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if getattr(args, "config", None):
        return from_recipe(cls, args.config, **typed)
    return cls(**typed)
