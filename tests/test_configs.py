"""Every recipe in configs/ loads into its config class with no unknown keys."""
from pathlib import Path

import pytest

from llmprune.config import PruneConfig
from llmprune.errors import LLMPruneError

PRUNE_RECIPES = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if not p.name.startswith(("imp-", "lth-")))


@pytest.mark.parametrize("recipe", PRUNE_RECIPES, ids=lambda p: p.name)
def test_prune_recipes_load(recipe):
    config = PruneConfig.from_yaml(recipe)
    assert config.method in ("magnitude", "wanda", "sparsegpt", "ria")
    assert (config.sparsity is None) != (config.pattern is None)


def test_unknown_recipe_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: wanda\nsparsityy: 0.5\n")
    with pytest.raises(LLMPruneError, match="unknown option.*sparsityy"):
        PruneConfig.from_yaml(bad)
