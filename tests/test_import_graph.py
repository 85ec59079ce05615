"""The house's one-way arrows, checked from the source (eval/import_graph.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "eval" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycle_and_no_arrow_back_up():
    result = _import_graph().summary(ROOT / "llmprune")
    assert result["modules"] > 50
    assert result["module_cycles"] == [] and result["folder_cycles"] == []
    assert result["arrows_back_up"] == []


def test_the_scan_finds_a_cycle_an_arrow_back_up_and_long_functions(tmp_path):
    package = tmp_path / "llmprune"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api.py").write_text("from .engine import loop\n")
    (package / "engine" / "__init__.py").write_text("")
    (package / "engine" / "loop.py").write_text("def run():\n    from . import step\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    (package / "engine" / "step.py").write_text("from .loop import run\nfrom ..api import go\ndef long():\n" + body)
    result = _import_graph().summary(package)
    assert result["module_cycles"] == [["llmprune.api", "llmprune.engine.loop", "llmprune.engine.step"]]
    assert result["arrows_back_up"] == ["llmprune.engine.step -> llmprune.api"]
    assert result["folder_cycles"] == [["api", "engine"]]
    assert result["functions_over_60_outside_cli"] == ["llmprune.engine.step.long"]
