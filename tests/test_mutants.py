"""The mutation list of eval/mutants.py stays honest: every mutation's old text is still in its file exactly
once and every test it names exists, so a refactor that moves the code fails here instead of leaving the
list stale (the mutation run itself is a script, not part of the suite)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("eval_mutants", ROOT / "eval" / "mutants.py")
mutants = importlib.util.module_from_spec(SPEC)
sys.modules["eval_mutants"] = mutants  # dataclasses look their module up there
SPEC.loader.exec_module(mutants)


@pytest.mark.parametrize("mutation", mutants.MUTATIONS, ids=lambda m: m.name)
def test_every_mutation_still_applies_and_names_existing_tests(mutation):
    assert mutants.stale(mutation) == []
    text = (ROOT / mutation.file).read_text(encoding="utf-8")
    assert mutants.mutated(text, mutation) != text
    for node in mutation.tests:
        path, _, rest = node.partition("::")
        function = re.match(r"\w+", rest).group(0)
        assert re.search(rf"^def {function}\(", (ROOT / path).read_text(encoding="utf-8"), re.MULTILINE), node


def test_mutation_names_are_unique_and_the_issue_list_is_covered():
    names = [m.name for m in mutants.MUTATIONS]
    assert len(names) == len(set(names)) == 14


def test_a_stale_mutation_stops_the_script_before_any_run(monkeypatch, capsys):
    gone = mutants.Mutation("gone", "text that is not in the file", "llmprune/methods/wanda.py",
                            (("this text is nowhere in wanda.py", "x"),), ("tests/test_methods.py::test_x",))
    assert mutants.stale(gone) == ["gone: the old text 'this text is nowhere in wanda.py' occurs 0 times in "
                                   "llmprune/methods/wanda.py (expected once)"]
    monkeypatch.setattr(mutants, "MUTATIONS", (gone,))
    monkeypatch.setattr(mutants, "copy_repository", lambda target: pytest.fail("copied the repository for a stale list"))
    assert mutants.main([]) == 2
    assert "the mutation list is stale" in capsys.readouterr().err
