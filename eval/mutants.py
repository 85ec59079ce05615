"""Plausible bugs the test suite must notice (issue 23): each mutation is a small edit of the code and the
tests that should fail with it. The script copies the repository (its tracked and unignored files) to a
temporary folder, checks that the named tests pass there unmutated, then applies one mutation at a time to
the copy, runs only its tests (``pytest -x -q``, one thread) and restores the file. The working tree is never
edited. A mutation whose old text is no longer in its file (or is there more than once) stops the script
before any run, so the list cannot go stale silently; tests/test_mutants.py checks the same in the suite.

    .venv/bin/python eval/mutants.py                 # every mutation
    .venv/bin/python eval/mutants.py moe-gate-up-all-tokens admm-no-schedule   # some
    .venv/bin/python eval/mutants.py --list
Writes eval/results/mutants.md and .json (not with names given); exit status 1 when a mutation survives.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmprune.process import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "eval" / "results"
TIMEOUT_S = 600  # per mutation; a mutation that hangs its tests is reported, not waited on forever


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # the plausible bug, in words
    file: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (exact old text, new text), each old text found exactly once
    tests: tuple[str, ...]  # pytest node ids that must fail with the mutation


MOE = "tests/test_moe_single_pass.py::"
RECON = "tests/test_reconstruct_targets.py::"
SHRINK = "tests/test_shrink_surgery.py::"
LTH = "tests/test_lth_controls.py::"
REFERENCE = "tests/test_reference_outputs.py::test_saved_weights_match_the_reference"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- mixture of experts, the default single pass (llmprune/engine/experts.py)
    Mutation("moe-gate-up-all-tokens", "single pass: an expert's gate/up statistics from every token, not its routed rows",
             "llmprune/engine/experts.py",
             (("stats = self._fold(None, x) if x is not None else None", "stats = self._fold(None, flat) if x is not None else None"),),
             (MOE + "test_single_pass_gate_and_up_statistics_are_those_of_the_routed_rows",)),
    Mutation("moe-fallback-routed-rows", "single pass: the all-tokens fallback built from one expert's routed rows",
             "llmprune/engine/experts.py",
             (("shared_all_tokens.append(self._fold(None, flat))", "shared_all_tokens.append(self._fold(None, flat[rows]))"),),
             (MOE + "test_single_pass_all_tokens_statistics_are_those_of_every_row[fallback]",)),
    Mutation("moe-statistics-option-ignored", "single pass: --expert-statistics all-tokens ignored (the report still says all-tokens)",
             "llmprune/engine/experts.py",
             (("            source = self.policy.source(self.tokens[expert])\n",
               "            source = self.policy.fallback if self.policy.too_few(self.tokens[expert]) else ROUTED\n"),),
             (MOE + "test_single_pass_all_tokens_statistics_are_those_of_every_row[statistics]",)),
    Mutation("moe-threshold-off-by-one", "an expert with exactly --min-expert-tokens tokens treated as too few",
             "llmprune/engine/experts.py",
             (("return tokens < max(self.min_tokens, 1)", "return tokens <= max(self.min_tokens, 1)"),),
             (MOE + "test_an_expert_with_exactly_the_threshold_keeps_its_routed_statistics[single-pass]",
              MOE + "test_an_expert_with_exactly_the_threshold_keeps_its_routed_statistics[chunks]")),
    # ---- block reconstruction targets (llmprune/reconstruct.py, llmprune/structured/run.py)
    Mutation("reconstruct-teacher-stuck", "the teacher stream never advances past block 0",
             "llmprune/reconstruct.py",
             (("            self.teacher = advanced  # the dense model's inputs to the next block\n", "            pass\n"),),
             (RECON + "test_pruning_reconstruction_targets_are_the_dense_models_or_the_dense_blocks_on_the_pruned_stream[teacher]",)),
    Mutation("reconstruct-local-uses-teacher", "--reconstruct-target local silently trains towards the teacher",
             "llmprune/reconstruct.py",
             (('if self.target == "teacher" and self.teacher is None:', "if self.teacher is None:"),
              ('teacher = self.target == "teacher"', "teacher = True")),
             (RECON + "test_pruning_reconstruction_targets_are_the_dense_models_or_the_dense_blocks_on_the_pruned_stream[local]",)),
    Mutation("shrink-removed-blocks-skip-steps", "shrink: before_prune not called on removed blocks (the teacher stream skips them)",
             "llmprune/structured/run.py",
             (("        for step in self.steps:  # the block is still dense: steps record its outputs (reconstruction targets)\n"
               "            step.before_prune(context)\n",
               "        for step in (self.steps if index not in self.removed_blocks else ()):\n"
               "            step.before_prune(context)\n"),),
             (RECON + "test_shrink_reconstruction_teacher_stream_advances_through_removed_blocks",)),
    # ---- shrink units (llmprune/structured/units/)
    Mutation("shrink-heads-no-refit", "shrink: no least-squares re-fit of o_proj after removing heads",
             "llmprune/structured/units/heads.py",
             (("narrow_consumer(submodule(block, attention.output), q_channels, stats, damp)",
               "narrow_consumer(submodule(block, attention.output), q_channels, None, damp)"),),
             (SHRINK + "test_o_proj_after_removing_heads_is_the_least_squares_fit_of_the_dense_outputs",)),
    Mutation("shrink-kv-heads-config", "shrink: the num_key_value_heads config edit forgotten",
             "llmprune/structured/units/heads.py",
             (("        if layout.kv_heads_key:\n            edits.append((layout.kv_heads_key, shape.kv_heads))\n", ""),),
             (SHRINK + "test_removing_a_whole_key_value_group_edits_the_config_and_the_folder_reloads",)),
    # ---- lottery tickets (llmprune/tickets/runner.py)
    Mutation("lth-controls-from-init", "lottery tickets: controls start from the initialisation, not the late-rewind point",
             "llmprune/tickets/runner.py",
             (("start = initial if r == 0 else self.rewind_state(seed, initial)",
               "start = initial if r == 0 or kind != self.ticket_kind else self.rewind_state(seed, initial)"),),
             (LTH + "test_controls_start_from_the_late_rewind_point",)),
    Mutation("lth-data-order-per-round", "lottery tickets: the data order changes every round",
             "llmprune/tickets/runner.py",
             (('self.domain.train(model, None if r == 0 else masks, seed, capture, f"{kind} r{r}")',
               'self.domain.train(model, None if r == 0 else masks, seed + r, capture, f"{kind} r{r}")'),),
             (LTH + "test_every_job_of_a_seed_sees_the_same_batches_in_the_same_order",)),
    # ---- ADMM (llmprune/methods/admm.py)
    Mutation("admm-no-schedule", "ADMM: the final sparsity from iteration 0 instead of the cubic schedule",
             "llmprune/methods/admm.py",
             (("keep = _select(torch.abs(v, out=u), target, _mask_fraction(iteration, schedule, target.sparsity))",
               "keep = _select(torch.abs(v, out=u), target, target.sparsity)"),),
             ("tests/test_admm_schedule.py::test_the_solver_receives_the_cubic_schedule_of_fractions",)),
    # ---- what the reference outputs were written to catch (tolerant comparison on a CPU without hashes)
    Mutation("sparsegpt-damping", "SparseGPT's damping 0.01 -> 0.05",
             "llmprune/methods/sparsegpt.py",
             (("def __init__(self, blocksize: int = 128, percdamp: float = 0.01)",
               "def __init__(self, blocksize: int = 128, percdamp: float = 0.05)"),),
             (REFERENCE + "[llama-sparsegpt-50]", REFERENCE + "[qwen3-sparsegpt-2:4]")),
    Mutation("wanda-score-squared", "Wanda scores |W| * ||X||^2 instead of |W| * ||X||",
             "llmprune/methods/wanda.py",
             (("weight.abs() * stats.sqrt().unsqueeze(0)", "weight.abs() * stats.unsqueeze(0)"),),
             (REFERENCE + "[llama-wanda-50]", REFERENCE + "[gpt2-wanda-2:4]")),
)


def stale(mutation: Mutation, root: Path = ROOT) -> list[str]:
    """Why the mutation no longer applies to the code at ``root`` (empty when it does)."""
    path = root / mutation.file
    if not path.is_file():
        return [f"{mutation.name}: {mutation.file} does not exist"]
    text = path.read_text(encoding="utf-8")
    problems = []
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            problems.append(f"{mutation.name}: the old text {old.strip()[:60]!r} occurs {count} times in {mutation.file} (expected once)")
        elif old == new:
            problems.append(f"{mutation.name}: an edit changes nothing")
    return problems


def mutated(text: str, mutation: Mutation) -> str:
    for old, new in mutation.edits:
        text = text.replace(old, new, 1)
    return text


def copy_repository(target: Path) -> None:
    """The tracked and unignored files of the working tree (so uncommitted edits count; .venv does not)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def run_tests(copy: Path, nodes: list[str]) -> tuple[int, float, str]:
    """(pytest's exit status, seconds, its output) for ``nodes`` in the copy, one thread, stopping at the first failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("PYTHONPATH", None)  # the copy's own llmprune (pytest puts its root first on sys.path)
    started = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *nodes],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        return run.returncode, time.perf_counter() - started, run.stdout + run.stderr
    except subprocess.TimeoutExpired as timeout:
        return -1, time.perf_counter() - started, f"timed out after {TIMEOUT_S} s\n{timeout.stdout or ''}"


def failure_line(output: str) -> str:
    """The first failing test and the first line of its error (pytest's ``E   ...`` line)."""
    lines = output.splitlines()
    failed = next((line.split(" - ")[0] for line in lines if line.startswith(("FAILED", "ERROR"))), "")
    error = next((line[1:].strip() for line in lines if line.startswith("E ")), "")
    return f"{failed.split('::', 1)[-1]}: {error}"[:300] if failed else ""


def write_results(rows: list[dict], seconds: float, command: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    survived = [row["name"] for row in rows if row["outcome"] != "killed"]
    lines = ["# Mutation run: plausible bugs the tests must catch (issue 23)", "",
             f"Command: `{command}`  ", f"CPU: {cpu_name()}, one thread per test run; {seconds:.0f} s in all.  ",
             f"Result: {len(rows) - len(survived)} of {len(rows)} mutations killed"
             + (f"; not killed: {', '.join(survived)}." if survived else "; none survives."), "",
             "| mutation | bug | file | outcome | s | first failure |", "|---|---|---|---|---|---|"]
    for row in rows:
        failure = row["failure"].replace("|", "\\|")
        lines.append(f"| {row['name']} | {row['bug']} | `{row['file']}` | {row['outcome']} | {row['seconds']:.0f} | {failure} |")
    (RESULTS / "mutants.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "mutants.json").write_text(json.dumps({"command": command, "cpu": cpu_name(), "seconds": round(seconds, 1),
                                                      "mutations": rows}, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [name for name in args.names if name not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)} (see --list)")
    chosen = [by_name[name] for name in args.names] if args.names else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.bug} ({m.file})\n    " + "\n    ".join(m.tests))
        return 0
    problems = [problem for m in chosen for problem in stale(m)]
    if problems:
        print("mutants: error: the mutation list is stale; update eval/mutants.py:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmprune-mutants-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        nodes = list(dict.fromkeys(node for m in chosen for node in m.tests))
        status, seconds, output = run_tests(copy, nodes)
        print(f"unmutated: {len(nodes)} tests, exit status {status} ({seconds:.0f} s)", flush=True)
        if status != 0:
            print(output[-3000:], file=sys.stderr)
            print("mutants: error: the named tests do not pass without a mutation, so a failure would prove nothing", file=sys.stderr)
            return 2
        for m in chosen:
            path = copy / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(mutated(original, m), encoding="utf-8")
            try:
                status, seconds, output = run_tests(copy, list(m.tests))
            finally:
                path.write_text(original, encoding="utf-8")
            # 1: a test failed (killed); 0: all passed (survived); anything else (a node not found, a
            # crash, a timeout) says nothing about the tests and is reported as such.
            outcome = {0: "SURVIVED", 1: "killed"}.get(status, f"error (exit status {status})")
            failure = failure_line(output) if status == 1 else ("" if status == 0 else output.strip().splitlines()[-1][:300] if output.strip() else "")
            rows.append({**asdict(m), "edits": [list(edit) for edit in m.edits], "outcome": outcome,
                         "seconds": round(seconds, 1), "failure": failure})
            print(f"{m.name}: {outcome} ({seconds:.0f} s) {failure}", flush=True)
    total = time.perf_counter() - started
    if not args.names:
        write_results(rows, total, "OMP_WAIT_POLICY=PASSIVE .venv/bin/python eval/mutants.py")
    survived = [row["name"] for row in rows if row["outcome"] != "killed"]
    print(f"{len(rows) - len(survived)} of {len(rows)} mutations killed" + (f"; not killed: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
