"""The job shell and the options around it: torch-free options, engine objects built by the API, the
calibration text read once per job, every command through the API."""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmprune.errors import LLMPruneError
from llmprune.options import PruneOptions, RunOptions

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_options_imports_no_torch_and_nothing_of_the_engine():
    code = ("import sys, llmprune.options; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'llmprune'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                       check=True).stdout.replace("'", '"'))
    assert loaded == ["llmprune", "llmprune.errors", "llmprune.options"]


def test_the_option_names_are_the_engine_names():
    from llmprune import options
    from llmprune.methods import METHODS

    assert options.METHODS == tuple(METHODS)


def test_build_makes_the_engine_objects_and_refuses_what_only_the_engine_judges():
    from llmprune.api.build import build

    parts = build(PruneOptions(method="sparsegpt", pattern="2:4", method_options={"blocksize": 64}, reconstruct=True))
    assert (parts.target.n, parts.target.m, parts.method.blocksize, parts.allocation) == (2, 4, 64, "uniform")
    assert [step.name for step in parts.steps] == ["reconstruct"] and parts.needs_calibration
    assert not build(PruneOptions(method="magnitude")).needs_calibration
    with pytest.raises(LLMPruneError, match="impossible pattern"):
        build(PruneOptions(pattern="4:2"))
    with pytest.raises(LLMPruneError, match="N:M"):
        build(PruneOptions(pattern="2:4", allocation="ramp"))
    with pytest.raises(LLMPruneError, match="unknown method"):
        build(PruneOptions(method="lottery"))
    from llmprune.methods.wanda import Wanda

    method = Wanda()  # Python may pass a method object instead of a name
    assert build(PruneOptions(method=method)).method is method


def _count_text_reads(monkeypatch) -> list[str]:
    import llmprune.calibration as calibration
    import llmprune.data as data

    reads: list[str] = []
    real = data.load_text

    def counting(source="wikipedia", split="train"):
        reads.append(f"{source}:{split}")
        return real(source, split)

    monkeypatch.setattr(data, "load_text", counting)
    monkeypatch.setattr(calibration, "load_text", counting)
    return reads


def test_a_prune_job_reads_its_calibration_text_once_even_with_auto_allocation(tiny_model_dir, calibration_text,
                                                                                 monkeypatch):
    from llmprune.api import run_prune

    reads = _count_text_reads(monkeypatch)
    report = run_prune(RunOptions(model=str(tiny_model_dir), sparsity=0.5, allocation="auto", heldout_windows=2,
                                  calibration=str(calibration_text), nsamples=4, seqlen=16, progress=False, device="cpu"))
    assert reads == [f"{calibration_text}:train"]
    assert report["calibration"]["source"] == str(calibration_text) and "allocation_auto" in report


def test_a_shrink_job_reads_its_calibration_text_once(tiny_model_dir, calibration_text, monkeypatch, tmp_path):
    from llmprune.api import run_shrink

    reads = _count_text_reads(monkeypatch)
    report = run_shrink(model=str(tiny_model_dir), ratio=0.25, units="mlp", multiple_of=8, calibration=str(calibration_text),
                        nsamples=4, seqlen=16, report=str(tmp_path / "r.json"), progress=False, device="cpu")
    assert reads == [f"{calibration_text}:train"]
    assert json.loads((tmp_path / "r.json").read_text())["ratio_reached"] == report["ratio_reached"]


def test_one_override_path_for_every_job():
    from llmprune.options import with_overrides
    from llmprune.structured.options import ShrinkOptions, ShrinkRunOptions

    assert with_overrides(None, ShrinkOptions, ratio=0.3) == ShrinkOptions(ratio=0.3)
    assert with_overrides(ShrinkRunOptions(model="m"), ShrinkRunOptions, units="mlp").model == "m"
    with pytest.raises(LLMPruneError, match="unknown shrink option\\(s\\) blocksize"):
        with_overrides(None, ShrinkRunOptions, blocksize=64)
    assert with_overrides(None, RunOptions, blocksize=64).method_options == {"blocksize": 64}


def test_every_command_runs_through_one_api_function():
    from llmprune.cli import COMMANDS

    for command, name in COMMANDS.items():
        module = importlib.import_module(f"llmprune.cli.{name}")
        run = ast.parse(inspect.getsource(module.run))
        called = [alias.name for node in ast.walk(run) if isinstance(node, ast.ImportFrom) and node.module == "api"
                  for alias in node.names]
        assert len(called) == 1, (command, called)
