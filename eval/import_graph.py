"""The shape of the package from its source: folders, import cycles, arrows back up, the longest functions.

    python eval/import_graph.py            # a markdown summary
    python eval/import_graph.py --json     # the same as JSON

Reads the source with ``ast`` (nothing is imported). An import inside a function counts like one at the
top: a cycle through a lazy import is still a cycle in the design. The floors are the one-way order the
house keeps (DESIGN.md): cli -> api -> everything else; an "arrow back up" is an import of ``cli`` or
``api`` from any other module.
"""
from __future__ import annotations

import argparse
import ast
import json
from collections import defaultdict
from pathlib import Path

PACKAGE = "llmprune"
TOP_FLOORS = ("cli", "api", "__main__")  # only these may import from above the rest (__main__: `python -m llmprune`)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom, modules: dict) -> list[str]:
    """The modules ``from X import Y`` reads: ``X.Y`` where that is a module (a submodule), else ``X``."""
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    submodules = [f"{prefix}.{alias.name}" for alias in node.names if f"{prefix}.{alias.name}" in modules]
    names_from_prefix = len(submodules) < len(node.names)
    return submodules + ([prefix] if names_from_prefix else [])


def scan(root: Path) -> dict:
    files = {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = defaultdict(set)
    functions = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = resolve(module, is_package, node, files)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{module}.{node.name}", str(path)))
            for target in targets:
                if target in files and target != module:
                    graph[module].add(target)
    return {"files": files, "graph": graph, "functions": functions}


def strongly_connected(graph: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    """Tarjan's components with more than one member (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return cycles


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def summary(root: Path, longest: int = 12) -> dict:
    scanned = scan(root)
    graph, files = scanned["graph"], scanned["files"]
    module_cycles = strongly_connected(graph, sorted(files))
    folder_graph: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if floor(source) != floor(target):
                folder_graph[floor(source)].add(floor(target))
    folders = sorted({floor(m) for m in files})
    folder_cycles = strongly_connected(folder_graph, folders)
    back_up = sorted(
        f"{source} -> {target}" for source, targets in graph.items() for target in targets
        if floor(target) in TOP_FLOORS and floor(source) not in TOP_FLOORS and source != PACKAGE
    )
    lines = defaultdict(int)
    for module, path in files.items():
        lines[floor(module)] += len(path.read_text(encoding="utf-8").splitlines())
    functions = sorted(scanned["functions"], reverse=True)
    return {
        "modules": len(files),
        "lines": sum(lines.values()),
        "folders": {name: {"lines": lines[name], "imports": sorted(folder_graph.get(name, ()))} for name in folders},
        "module_cycles": module_cycles,
        "folder_cycles": folder_cycles,
        "arrows_back_up": back_up,
        "longest_functions": [{"lines": n, "function": name} for n, name, _ in functions[:longest]],
        "functions_over_60_outside_cli": [name for n, name, _ in functions if n > 60 and floor(name) != "cli"],
    }


def markdown(result: dict) -> str:
    out = [f"# {PACKAGE}: {result['modules']} modules, {result['lines']} lines", "", "| floor | lines | imports |",
           "|---|---:|---|"]
    out += [f"| {name} | {info['lines']} | {', '.join(info['imports'])} |" for name, info in result["folders"].items()]
    out += ["", f"- module import cycles: {len(result['module_cycles'])} {result['module_cycles'] or ''}",
            f"- folder-level cycles: {len(result['folder_cycles'])} {result['folder_cycles'] or ''}",
            f"- arrows back up (cli/api imported from below): {len(result['arrows_back_up'])} {result['arrows_back_up'] or ''}",
            f"- functions over 60 lines outside cli: {len(result['functions_over_60_outside_cli'])}", "",
            "| longest functions | lines |", "|---|---:|"]
    out += [f"| {entry['function']} | {entry['lines']} |" for entry in result["longest_functions"]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / PACKAGE))
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--longest", type=int, default=12, help="how many of the longest functions to list")
    args = parser.parse_args()
    result = summary(Path(args.root), args.longest)
    print(json.dumps(result, indent=1) if args.json else markdown(result))


if __name__ == "__main__":
    main()
