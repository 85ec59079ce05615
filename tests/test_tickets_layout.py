"""The lottery-ticket products stay apart from the LLM path (checked from the source, eval/import_graph.py)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llmprune"
TICKETS = PACKAGE / "tickets"
# the API's ticket functions, and the two commands whose flags are generated from the ticket options classes
TICKET_COMMANDS = {"llmprune.api.tickets", "llmprune.cli.imp", "llmprune.cli.lth"}
# the LLM engine's floors: a ticket module importing one would tie the two products together
LLM_ENGINE = ("api", "cli", "engine", "methods", "allocation", "structured", "reconstruct", "calibration")


def _scan() -> dict:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "eval" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scan(PACKAGE)


def test_no_ticket_module_repeats_a_module_name_of_the_llm_side():
    tickets = {p.stem for p in TICKETS.rglob("*.py") if p.stem != "__init__"}
    llm_side = {p.stem for p in PACKAGE.rglob("*.py") if TICKETS not in p.parents and p.stem != "__init__"}
    assert {"runner", "bert_domain", "vision_domain", "ticket_masks"} <= tickets
    assert tickets & llm_side == set()


def test_only_the_ticket_api_and_commands_import_tickets_and_tickets_import_no_llm_engine():
    graph = _scan()["graph"]
    in_tickets = {m for m in graph if m.startswith("llmprune.tickets")} | \
        {t for targets in graph.values() for t in targets if t.startswith("llmprune.tickets")}
    assert len(in_tickets) > 15
    importers = {source for source, targets in graph.items() if not source.startswith("llmprune.tickets")
                 and any(t.startswith("llmprune.tickets") for t in targets)}
    assert importers == TICKET_COMMANDS
    engine = {f"{source} -> {target}" for source, targets in graph.items() if source.startswith("llmprune.tickets")
              for target in targets if target.split(".")[1] in LLM_ENGINE}
    assert engine == set()


def test_the_shared_runner_imports_no_domain():
    graph = _scan()["graph"]
    shared = [m for m in graph if m.startswith("llmprune.tickets.") and m.count(".") == 2]
    assert "llmprune.tickets.runner" in shared
    domains = {f"{source} -> {target}" for source in shared for target in graph[source]
               if target.startswith(("llmprune.tickets.bert", "llmprune.tickets.scratch"))}
    assert domains == set()


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its place in the repository."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            found |= {prefix} | {f"{prefix}.{alias.name}" for alias in node.names}
    return found


def test_nothing_imports_the_old_imp_package():
    # the shared venv's editable install finds a module missing here in another checkout, so a stale
    # import of llmprune.imp would still run there: only the source can tell
    files = [p for folder in ("llmprune", "tests", "eval") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 100 and not (PACKAGE / "imp").exists()
    stale = {f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imported_modules(p)
             if m == "llmprune.imp" or m.startswith("llmprune.imp.")}
    assert stale == set()
