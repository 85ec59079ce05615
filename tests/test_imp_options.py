"""One options object per lottery-ticket job: the dataclass, the CLI flags and the YAML recipes agree."""
import argparse
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from llmprune.cli import build_parser
from llmprune.cli.dataclass_flags import options_from_args
from llmprune.errors import LLMPruneError
from llmprune.tickets.bert.imp_options import IMPOptions
from llmprune.tickets.scratch.lth_options import LTHOptions

CONFIGS = Path(__file__).parent.parent / "configs"
JOBS = [("imp", IMPOptions), ("lth", LTHOptions)]


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    return build_parser(command).parse_args(argv)


@pytest.mark.parametrize("command,cls", JOBS)
def test_no_flags_means_the_dataclass_defaults(command, cls):
    assert options_from_args(cls, parse(command, [])) == cls()


@pytest.mark.parametrize("command,cls", JOBS)
def test_help_shows_the_dataclass_defaults(command, cls):
    # without whitespace: argparse wraps lines, also after hyphens
    text = "".join(build_parser(command).format_help().split())
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING else f.default
        if isinstance(default, bool):
            continue  # switches: --overwrite, --no-progress
        shown = f.metadata.get("shown", "none" if default in (None, []) else str(default))
        assert "".join(f"(default: {shown})".split()) in text, f.name


def test_imp_defaults_are_one_experiment():
    # the Python default and the command's default were 5 and 9 rounds once: now one value
    assert IMPOptions().rounds is None and parse("imp", []).rounds is None
    assert IMPOptions().output == "imp-rt-polarity" and IMPOptions(task="x/my.csv").output == "imp-my"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("imp-*.yaml")) + sorted(CONFIGS.glob("lth-*.yaml")),
                         ids=lambda p: p.name)
def test_recipes_load_the_same_through_python_and_cli(recipe):
    command, cls = ("imp", IMPOptions) if recipe.name.startswith("imp-") else ("lth", LTHOptions)
    from_python = cls.from_recipe(recipe)
    assert options_from_args(cls, parse(command, ["--config", str(recipe)])) == from_python
    # a flag overrides a conflicting recipe key
    overridden = options_from_args(cls, parse(command, ["--config", str(recipe), "--seed", "7", "--lr", "0.125"]))
    assert overridden.seed == 7 and overridden.lr == 0.125
    assert cls.from_recipe(recipe, seed=7, lr=0.125) == overridden


def test_validation_happens_once_and_says_what_is_wrong(tmp_path):
    with pytest.raises(LLMPruneError, match="unknown baseline"):
        IMPOptions(baselines="random-prune,nonsense")
    with pytest.raises(LLMPruneError, match="unknown control"):
        LTHOptions(controls="reinit,magic")
    assert LTHOptions(controls="all").controls == ["reinit", "random-mask", "one-shot"]
    with pytest.raises(LLMPruneError, match="--hidden"):
        LTHOptions(hidden="300,x")
    with pytest.raises(LLMPruneError, match="--rate must be between 0 and 1"):
        LTHOptions(rate=1.5)
    with pytest.raises(LLMPruneError, match="unknown --rewind"):
        LTHOptions(rewind="step:-3")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: lenet\nno-progress: true\nlearning-rate: 1\n")
    with pytest.raises(LLMPruneError, match="unknown option.*learning_rate"):
        LTHOptions.from_recipe(recipe)
    recipe.write_text("preset: lenet\nno-progress: true\n")
    assert LTHOptions.from_recipe(recipe).progress is False
