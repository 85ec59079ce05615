"""Every recipe in configs/ loads into its config class with no unknown keys."""
from pathlib import Path

import pytest

from llmprune.options import RunOptions
from llmprune.errors import LLMPruneError
from llmprune.methods import METHODS

PRUNE_RECIPES = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if not p.name.startswith(("imp-", "lth-", "shrink-")))
SHRINK_RECIPES = sorted((Path(__file__).parent.parent / "configs").glob("shrink-*.yaml"))


@pytest.mark.parametrize("recipe", PRUNE_RECIPES, ids=lambda p: p.name)
def test_prune_recipes_load(recipe):
    config = RunOptions.from_yaml(recipe)
    assert config.method in METHODS
    assert (config.sparsity is None) != (config.pattern is None)


@pytest.mark.parametrize("recipe", SHRINK_RECIPES, ids=lambda p: p.name)
def test_shrink_recipes_load(recipe):
    from llmprune.cli import build_parser
    from llmprune.cli.dataclass_flags import options_from_args
    from llmprune.structured import ShrinkRunOptions

    options = options_from_args(ShrinkRunOptions, build_parser("shrink").parse_args(["--config", str(recipe)]))
    assert 0 < options.ratio < 1 and (options.units == "auto" or options.parsed_units())  # every key known, the units valid


def test_unknown_recipe_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: wanda\nsparsityy: 0.5\n")
    with pytest.raises(LLMPruneError, match="unknown option.*sparsityy"):
        RunOptions.from_yaml(bad)


# ---------------------------------------------------------------- one options object, three front doors

def test_cli_flags_are_the_options_fields_with_the_same_defaults():
    from dataclasses import fields

    from llmprune.cli import build_parser
    from llmprune.cli.dataclass_flags import options_from_args
    from llmprune.cli.prune import NOT_FLAGS
    from llmprune.options import RunOptions, defaults

    parser = build_parser("prune")
    # No flag given: exactly the dataclass's defaults.
    assert options_from_args(RunOptions, parser.parse_args([])) == RunOptions()
    dests = {action.dest for action in parser._actions} - {"help", "config"}
    assert dests == {f.name for f in fields(RunOptions)} - set(NOT_FLAGS)
    # --help shows each non-empty default as the dataclass sets it.
    help_text = " ".join(parser.format_help().split())
    for name, value in defaults(RunOptions).items():
        if value not in (False, True, {}) and name not in NOT_FLAGS:
            shown = [f for f in fields(RunOptions) if f.name == name][0].metadata.get("shown", value)
            assert f"(default: {'none' if shown is None else shown})" in help_text, name


def test_api_defaults_are_the_options_defaults():
    import inspect

    import llmprune
    from llmprune.options import PruneOptions, with_overrides

    # prune() states no defaults of its own: every option comes from PruneOptions.
    parameters = inspect.signature(llmprune.prune).parameters
    assert set(parameters) == {"model", "tokenizer", "options", "calibration_ids", "overrides"}
    assert with_overrides(None) == PruneOptions()
    assert with_overrides(None, sparsity=0.6, blocksize=64) == PruneOptions(sparsity=0.6, method_options={"blocksize": 64})


def test_a_recipe_of_the_defaults_is_the_defaults(tmp_path):
    from llmprune.options import RunOptions, defaults

    recipe = tmp_path / "defaults.yaml"
    recipe.write_text("".join(f"{k}: {v if v is not None else 'null'}\n" for k, v in defaults(RunOptions).items() if k != "method_options"))
    assert RunOptions.from_yaml(recipe) == RunOptions()


def test_a_flag_replaces_the_recipe_key_it_conflicts_with(capsys):
    from llmprune.cli import build_parser
    from llmprune.cli.dataclass_flags import options_from_args
    from llmprune.options import RunOptions

    recipe = Path(__file__).parent.parent / "configs" / "paper-wanda-128x2048.yaml"
    parser = build_parser("prune")
    options = options_from_args(RunOptions, parser.parse_args(["--config", str(recipe), "--pattern", "2:4"]))
    assert options.pattern == "2:4" and options.sparsity is None and options.nsamples == 128
    from llmprune.api.build import sparsity_target

    assert sparsity_target(options).pattern == "2:4"
    options = options_from_args(RunOptions, parser.parse_args(["--config", str(recipe), "--sparsity", "0.6", "--method", "sparsegpt"]))
    assert (options.sparsity, options.method, options.seqlen) == (0.6, "sparsegpt", 2048)
