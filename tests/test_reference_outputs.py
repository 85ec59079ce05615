"""No change in results: every saved folder matches the reference outputs (tests/reference_outputs.py says
what is exact on every CPU and what is compared within a tolerance)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import reference_outputs
from tests.reference_outputs import cases, check_case, compare, describe, load_reference, run_case

REFERENCE = load_reference()
ROOT = Path(__file__).resolve().parent.parent
# Cases whose SparseGPT bits (and, for the first two, masks) change under AVX2 kernels on an AVX-512 machine.
ISA_SENSITIVE = ["phi3-sparsegpt-2:4", "llama-sparsegpt-50", "qwen2-sparsegpt-2:4"]


@pytest.mark.parametrize("name", sorted(cases()))
def test_saved_weights_match_the_reference(name, tmp_path):
    problems, _ = check_case(name, tmp_path, REFERENCE)
    assert not problems, "; ".join(problems)


def test_every_case_has_a_reference():
    assert sorted(REFERENCE["cases"]) == sorted(cases())
    for family, hashes in REFERENCE["exact"].items():
        assert sorted(hashes) == sorted(cases()), family


def test_reference_holds_under_another_cpus_kernels():
    """The AVX2 kernels of MKL and ATen (what an AMD CPU gets) change SparseGPT's bits and masks; the
    comparison must still pass there, without exact hashes."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "tests.reference_outputs", *ISA_SENSITIVE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"{len(ISA_SENSITIVE)} of {len(ISA_SENSITIVE)} cases match" in summary
    assert "no exact hashes for this CPU family" in summary  # the tolerant path is what ran


@pytest.mark.parametrize("change", [dict(percdamp=0.05), dict(blocksize=16)], ids=["damping", "blocksize"])
def test_tolerant_comparison_catches_a_changed_method(change, tmp_path):
    """Without exact hashes, a SparseGPT run with another damping or block size still fails the comparison."""
    from tests.reference_outputs import _load_tensors, _source_folder

    case = "llama-sparsegpt-50"
    output = run_case(dict(cases()[case], **change), tmp_path)
    source = _source_folder("llama", tmp_path)
    problems = compare(REFERENCE["cases"][case], describe(source, output), "sparsegpt", _load_tensors(source),
                       _load_tensors(output), exact_hash=None)
    assert problems


def test_a_kept_weight_that_moved_fails_for_methods_that_only_zero(tmp_path):
    from tests.reference_outputs import _load_tensors, _source_folder

    case = "llama-wanda-50"
    output = run_case(cases()[case], tmp_path)
    source = _source_folder("llama", tmp_path)
    saved = _load_tensors(output)
    layer = next(iter(REFERENCE["cases"][case]["output_errors"])) + ".weight"
    kept = (saved[layer] != 0).nonzero()[0]
    saved[layer][tuple(kept)] *= 1.0 + 1e-6
    problems = compare(REFERENCE["cases"][case], describe(source, output), "wanda", _load_tensors(source), saved)
    assert any("not the dense value" in problem for problem in problems)


def test_cpu_family_names_the_kernel_choice(monkeypatch):
    plain = reference_outputs.cpu_family()
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert reference_outputs.cpu_family() != plain
