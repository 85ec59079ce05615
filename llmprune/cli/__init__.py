"""The ``llmprune`` command: a thin front over the Python API.

``llmprune [prune] --model M --method wanda --sparsity 0.5`` prunes (the default command);
the other commands are named first: ``llmprune eval ...``, ``llmprune inspect DIR``, ...
Each command lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import LLMPruneError

# command name -> module inside llmprune.cli
COMMANDS: dict[str, str] = {
    "prune": "prune",
    "eval": "evaluate",
    "inspect": "inspect",
    "decompress": "decompress",
    "convert": "convert",
    "push": "push",
    "shrink": "shrink",
    "imp": "imp",
    "glue": "glue",
    "lth": "lth",
}
DEFAULT_COMMAND = "prune"


def _describe_commands() -> str:
    lines = ["commands (prune is the default when none is named):"]
    for name, module in COMMANDS.items():
        summary = importlib.import_module(f"{__name__}.{module}").HELP
        lines.append(f"  {name:<11} {summary}")
    lines.append("\nrun 'llmprune COMMAND --help' for the options of one command")
    return "\n".join(lines)


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes get one line (and the hint to ask for --help), like every other error."""

    def error(self, message: str):
        self.exit(2, f"llmprune: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"{__name__}.{COMMANDS[command]}")
    parser = _OneLineErrors(
        prog=f"llmprune {command}" if command != DEFAULT_COMMAND else "llmprune",
        description=module.__doc__,
        epilog=getattr(module, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser



def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(build_parser(DEFAULT_COMMAND).format_help())
        print(_describe_commands())
        return 0
    command = argv.pop(0) if argv and argv[0] in COMMANDS else DEFAULT_COMMAND
    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors and --help; the message is already printed
        return int(exit_.code or 0)
    try:
        return int(args._run(args) or 0)
    except LLMPruneError as exc:
        print(f"llmprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmprune: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("llmprune: error: out of memory (try fewer --nsamples, a shorter --seqlen or --dtype bfloat16)", file=sys.stderr)
        return 3
    except OSError as exc:
        if os.environ.get("LLMPRUNE_DEBUG"):
            raise
        print(f"llmprune: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
