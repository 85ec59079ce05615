"""Flags derived one-to-one from an options dataclass, and a recipe between them and the defaults.

Every flag's default is shown in ``--help`` but kept out of argparse (which defaults to
None), so the order of precedence is: the dataclass default, then the ``--config`` recipe,
then the flags actually typed.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _value_type(f):
    kind = str(f.type)
    if "float" in kind:
        return float
    if "int" in kind:
        return int
    return str


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    parser.add_argument("--config", help="YAML recipe whose keys are these option names (e.g. batch-size: 60); "
                                         "flags override it")
    for f in fields(cls):
        default, help_text = _default(f), f.metadata.get("help", "")
        if isinstance(default, bool):
            # a flag that flips the default: --overwrite sets True, --no-progress sets progress False
            parser.add_argument(_flag(f), dest=f.name, action="store_const", const=not default, default=None,
                                help=help_text.replace("%", "%%"))
            continue
        parser.add_argument(_flag(f), dest=f.name, type=_value_type(f), default=None,
                            choices=f.metadata.get("choices"),
                            help=f"{help_text} (default: {f.metadata.get('shown', _shown(default))})".replace("%", "%%"))


def options_from_args(cls, args: argparse.Namespace):
    """The options object: dataclass defaults < the ``--config`` recipe < typed flags; validated once."""
    from ..imp.options import load_recipe

    values = load_recipe(cls, args.config) if getattr(args, "config", None) else {}
    values.update({f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})
    return cls(**values)
