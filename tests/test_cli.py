"""The prune command end to end on a tiny model folder, and one clear line for every bad input."""
import json
import shutil
from collections import namedtuple

import pytest
import transformers

from llmprune.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def common_args(model_dir, calibration_text):
    return ["--model", model_dir, "--calibration", calibration_text, "--nsamples", 4, "--seqlen", 32, "--no-progress"]


def test_prune_command_writes_a_loadable_folder_and_report(tiny_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, stderr = run_cli(
        capsys, *common_args(tiny_model_dir, calibration_text), "--method", "wanda", "--sparsity", 0.5, "--output", out
    )
    assert code == 0, stderr
    assert "saved to" in stdout
    report = json.loads((out / "llmprune_report.json").read_text())
    assert report["method"] == "wanda" and report["pattern"] is None and report["target_sparsity"] == 0.5
    assert report["calibration"] == {"source": str(calibration_text), "nsamples": 4, "seqlen": 32, "seed": 0, "chunks": 1}
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(out)
    for name, sparsity in report["layers"].items():
        weight = dict(model.named_modules())[name].weight
        assert (weight == 0).float().mean().item() == pytest.approx(sparsity)
    assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_recipe_file_with_flag_override(tiny_model_dir, calibration_text, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\nmethod: magnitude\npattern: '2:4'\nprogress: false\n")
    code, _, stderr = run_cli(capsys, "--config", recipe, "--method", "sparsegpt", "--calibration", calibration_text,
                              "--nsamples", 2, "--seqlen", 16, "--report", tmp_path / "r.json")
    assert code == 0, stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "sparsegpt" and report["pattern"] == "2:4"


Case = namedtuple("Case", "args message")
BAD_INPUTS = {
    "unknown model": Case(["--model", "no-such-model-anywhere"], "cannot load model"),
    "missing folder": Case(["--model", "./missing/folder"], "model not found"),
    "sparsity too high": Case(["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    "sparsity negative": Case(["--sparsity", "-0.5"], "sparsity must be in [0, 1)"),
    "malformed pattern": Case(["--pattern", "2/4"], "malformed pattern"),
    "impossible pattern": Case(["--pattern", "4:4"], "impossible pattern"),
    "both targets": Case(["--sparsity", "0.5", "--pattern", "2:4"], "not both"),
    "unknown method": Case(["--method", "lottery"], "unknown method 'lottery'"),
    "unknown flag": Case(["--sparsness", "0.5"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_and_writes_nothing(case, tiny_model_dir, calibration_text, tmp_path, capsys):
    args, message = BAD_INPUTS[case]
    base = common_args(tiny_model_dir, calibration_text)
    if "--model" in args:
        base = base[2:]
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, *base, *args, "--output", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmprune: error:") and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def assert_one_line_error(code, stderr, message):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr


def test_unreadable_gguf(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    code, _, stderr = run_cli(capsys, "--model", bad, "--output", tmp_path / "out")
    assert_one_line_error(code, stderr, "cannot read GGUF file")
    assert not (tmp_path / "out").exists()


def test_calibration_shorter_than_one_window(tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("the cat sat")
    code, _, stderr = run_cli(capsys, "--model", tiny_model_dir, "--calibration", short, "--seqlen", 64, "--output", tmp_path / "out")
    assert_one_line_error(code, stderr, "calibration text is too short")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tiny_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--output", out)
    assert_one_line_error(code, stderr, "already exists")
    assert (out / "keep.txt").read_text() == "mine"
    code, _, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--output", out, "--overwrite")
    assert code == 0, stderr
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()


def test_no_space_for_the_output(tiny_model_dir, calibration_text, tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    code, _, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--output", tmp_path / "out")
    assert_one_line_error(code, stderr, "not enough space")
    assert not (tmp_path / "out").exists()


def test_unknown_calibration_file_type(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "calib.csv"
    data.write_text("a,b\n")
    code, _, stderr = run_cli(capsys, "--model", tiny_model_dir, "--calibration", data, "--output", tmp_path / "out")
    assert code == 2 and "calib.csv" in stderr and len(stderr.strip().splitlines()) == 1


def test_help_lists_the_commands(capsys):
    code, stdout, _ = run_cli(capsys, "--help")
    assert code == 0 and "--sparsity" in stdout and "prune" in stdout


def test_evaluation_after_pruning_goes_into_the_report(tiny_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--output", out,
                                   "--ppl", calibration_text, "--eval-seqlen", 16, "--eval-windows", 3)
    assert code == 0, stderr
    report = json.loads((out / "llmprune_report.json").read_text())
    result = report["eval"]["results"]["ppl"][str(calibration_text)]
    assert result["windows"] == 3 and result["ppl"] > 1
    assert "after pruning" in stdout


@pytest.mark.parametrize("ppl", ["none", "off"])
def test_ppl_none_means_no_evaluation_not_an_error(ppl, tiny_model_dir, calibration_text, tmp_path, capsys):
    # --help shows "none" as --ppl's default; typed, it once failed after the whole prune had run.
    report_path = tmp_path / "report.json"
    code, stdout, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--ppl", ppl,
                                   "--report", report_path)
    assert code == 0, stderr
    assert "eval" not in json.loads(report_path.read_text())


def test_unknown_task_fails_before_any_work(tiny_model_dir, calibration_text, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--output", tmp_path / "out",
                              "--tasks", "no_such_task_xyz")
    assert_one_line_error(code, stderr, "no_such_task_xyz")
    assert not (tmp_path / "out").exists()


def test_output_files_are_readable_by_others(tiny_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, *common_args(tiny_model_dir, calibration_text), "--method", "magnitude", "--output", out)
    assert code == 0, stderr
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in [out, *out.iterdir()])


def test_reported_peak_memory_is_the_process_own_not_its_parents():
    # A process started by a large one (a benchmark driver) must not report the driver's memory:
    # getrusage's ru_maxrss does, /proc's VmHWM does not.
    import subprocess
    import sys

    ballast = bytearray(1024 * 2**20)  # 1 GiB resident in this (parent) process
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    child = subprocess.run(
        [sys.executable, "-c", "import llmprune.process as process; print(process.peak_rss_mb())"],
        capture_output=True, text=True, check=True,
    )
    del ballast
    assert float(child.stdout.strip().splitlines()[-1]) < 900
