"""llmprune shrink: the teacher re-fit, block reconstruction after shrinking, and the one options object."""
from __future__ import annotations

import inspect
import json
from dataclasses import MISSING, fields

import pytest
import torch
import transformers

import llmprune
from tests.conftest import random_calibration
from tests.test_shrink import build, logits, save_and_reload
from llmprune.cli import build_parser, main
from llmprune.cli.dataclass_flags import options_from_args
from llmprune.errors import LLMPruneError
from llmprune.structured import shrink
from llmprune.structured.options import ShrinkOptions, ShrinkRunOptions
from llmprune.structured.scores import InputStatistics
from llmprune.structured.surgery import least_squares_refit


# ---------------------------------------------------------------- the teacher re-fit

@pytest.mark.parametrize("with_bias", (False, True))
def test_teacher_refit_equals_a_direct_lstsq_of_the_dense_outputs_on_the_kept_inputs(with_bias):
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(300, 10, generator=generator) + 0.3  # the layer's inputs in the dense model
    shrunk = teacher + 0.3 * torch.randn(300, 10, generator=generator)  # the same tokens' inputs here
    weight = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64) if with_bias else None
    stats = InputStatistics.empty(10, "cpu", teacher=True)
    for rows in (slice(0, 120), slice(120, 300)):  # gathered over two chunks
        stats.update(shrunk[rows], teacher[rows])
    keep = [1, 2, 4, 5, 8]
    new_weight, new_bias = least_squares_refit(weight, stats, keep, bias, damp=0.0)
    target = teacher.double() @ weight.t() + (bias if with_bias else 0.0)
    design = shrunk.double()[:, keep]
    if with_bias:
        design = torch.cat([design, torch.ones(len(design), 1, dtype=design.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution
    torch.testing.assert_close(new_weight, solution[: len(keep)].t(), rtol=1e-4, atol=1e-4)
    if with_bias:
        torch.testing.assert_close(new_bias, solution[-1], rtol=1e-4, atol=1e-4)
    # aiming at the layer's own outputs instead gives another answer: the teacher's inputs count
    local = InputStatistics.empty(10, "cpu")
    local.update(shrunk)
    assert not torch.allclose(least_squares_refit(weight, local, keep, bias, damp=0.0)[0], new_weight, atol=1e-3)


def test_teacher_statistics_refuse_inputs_of_other_tokens():
    stats = InputStatistics.empty(6, "cpu", teacher=True)
    with pytest.raises(LLMPruneError, match="do not match"):
        stats.update(torch.randn(10, 6), torch.randn(9, 6))


def test_teacher_refit_brings_the_shrunk_model_closer_to_the_dense_one():
    dense = build("llama", layers=4)
    ids = random_calibration(8, 32)
    errors = {}
    for refit_target in ("local", "teacher"):
        shrunk = build("llama", layers=4)
        shrink(shrunk, ratio=0.4, units="mlp,heads", multiple_of=8, refit_target=refit_target, calibration_ids=ids,
               progress=False, device="cpu")
        errors[refit_target] = float((logits(shrunk, ids) - logits(dense, ids)).pow(2).mean())
    assert errors["teacher"] < errors["local"], errors


def test_teacher_refit_runs_the_same_with_several_calibration_chunks():
    ids = random_calibration(6, 32)
    one, three = build("llama", layers=3), build("llama", layers=3)
    options = dict(ratio=0.3, units="mlp,heads", multiple_of=8, refit_target="teacher", progress=False, device="cpu")
    shrink(one, calibration_ids=ids, **options)
    shrink(three, calibration_ids=ids, batch_size=2, **options)
    torch.testing.assert_close(logits(one, ids), logits(three, ids), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- block reconstruction after shrinking

def test_reconstruction_lowers_the_held_out_block_error_and_the_folder_loads_with_stock_transformers(tmp_path):
    # Without the least-squares re-fit the shrunk blocks start far from the dense ones (on a tiny random
    # model the re-fit alone leaves errors of 0.2%, too little for a few Adam steps to improve reliably).
    ids = random_calibration(32, 32)
    model = build("llama", layers=3)
    report = shrink(model, ratio=0.4, units="mlp,heads", multiple_of=8, score="magnitude", compensate=False,
                    calibration_ids=ids, reconstruct=True, reconstruct_steps=40, progress=False, device="cpu")
    healed = report["reconstruct"]
    assert [entry["block"] for entry in healed["blocks"]] == [0, 1, 2]
    assert healed["held_out_windows"] == 4 and healed["train_windows"] == 28
    for entry in healed["blocks"]:
        assert entry["held_out_error_after"] < 0.5 * entry["held_out_error_before"], entry
    reloaded = save_and_reload(model, tmp_path / "healed")
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids))


def test_reconstruction_trains_weights_that_are_exactly_zero_too():
    # A shrunk block has no pruning mask: a kept weight that happens to be 0 is free to move.
    ids = random_calibration(8, 32)
    model = build("llama", layers=2)
    model.model.layers[0].self_attn.q_proj.weight.data[:, :4] = 0.0
    shrink(model, ratio=0.3, units="mlp", multiple_of=8, calibration_ids=ids, reconstruct=True, reconstruct_steps=5,
           reconstruct_rollback=False, progress=False, device="cpu")
    assert model.model.layers[0].self_attn.q_proj.weight[:, :4].abs().sum() > 0


def test_reconstruction_after_block_removal_keeps_the_teacher_in_step():
    ids = random_calibration(8, 32)
    model = build("llama", layers=4)
    report = shrink(model, ratio=0.25, units="blocks", calibration_ids=ids, reconstruct=True, reconstruct_steps=4,
                    progress=False, device="cpu")
    assert len(report["removed_blocks"]) == 1
    assert sorted(entry["block"] for entry in report["reconstruct"]["blocks"]) == sorted(
        set(range(4)) - set(report["removed_blocks"]))


# ---------------------------------------------------------------- one options object

def test_shrink_takes_the_options_object_or_its_fields_and_states_no_defaults_of_its_own():
    assert set(inspect.signature(llmprune.shrink).parameters) == {"model", "tokenizer", "options", "calibration_ids",
                                                                 "calibration_text", "overrides"}
    ids = random_calibration()
    by_keywords, by_object = build("llama"), build("llama")
    shrink(by_keywords, ratio=0.3, units="mlp", multiple_of=8, calibration_ids=ids, progress=False, device="cpu")
    shrink(by_object, options=ShrinkOptions(ratio=0.3, units="mlp", multiple_of=8, progress=False, device="cpu"), calibration_ids=ids)
    torch.testing.assert_close(logits(by_keywords, ids), logits(by_object, ids))
    with pytest.raises(LLMPruneError, match="unknown shrink option\\(s\\) sparsity"):
        shrink(build("llama"), sparsity=0.5)


def test_no_flags_means_the_dataclass_defaults_and_help_shows_them():
    parser = build_parser("shrink")
    assert options_from_args(ShrinkRunOptions, parser.parse_args([])) == ShrinkRunOptions()
    dests = {action.dest for action in parser._actions} - {"help", "config"}
    assert dests == {f.name for f in fields(ShrinkRunOptions)}
    text = "".join(parser.format_help().split())  # argparse wraps lines, also after hyphens
    for f in fields(ShrinkRunOptions):
        default = f.default_factory() if f.default is MISSING else f.default
        if isinstance(default, bool):
            continue  # switches: --reconstruct, --no-compensate
        shown = f.metadata.get("shown", "none" if default is None else str(default))
        assert "".join(f"(default: {shown})".split()) in text, f.name


def test_shared_options_are_the_pruning_options_own():
    from llmprune.options import PruneOptions, RunOptions

    prune_fields = {f.name: f for f in fields(RunOptions)}
    own_defaults = {"reconstruct_target": ("local", "teacher")}  # (shrink's, pruning's): measured apart
    for f in fields(ShrinkRunOptions):
        if f.name in prune_fields:
            other = prune_fields[f.name]
            assert (f.metadata.get("flag"), f.metadata.get("choices")) == (other.metadata.get("flag"), other.metadata.get("choices")), f.name
            assert (f.default, other.default) == own_defaults.get(f.name, (other.default, other.default)), f.name
    assert ShrinkOptions().reconstruct_steps == PruneOptions().reconstruct_steps


def test_a_yaml_recipe_sets_shrink_options(tmp_path):
    recipe = tmp_path / "shrink.yaml"
    recipe.write_text("ratio: 0.3\nunits: mlp\nreconstruct: true\nreconstruct_steps: 8\nno-compensate: true\n")
    options = options_from_args(ShrinkRunOptions, build_parser("shrink").parse_args(["--config", str(recipe), "--ratio", "0.2"]))
    assert (options.ratio, options.units, options.reconstruct, options.reconstruct_steps, options.compensate) == (0.2, "mlp", True, 8, False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reconstruct", "--reconstruct-steps", "-1", "--output", "x"], "--reconstruct-steps must be at least 0"),
        (["--ratio", "0", "--output", "x"], "ratio must be in \\(0, 1\\)"),
        (["--refit-target", "dense", "--output", "x"], "unknown --refit-target 'dense'"),
        ([], "nothing to keep"),
    ],
)
def test_bad_shrink_options_fail_in_one_line_before_loading(argv, message, capsys, tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    # a YAML recipe bypasses the flags' choices, so --refit-target is checked by the options too
    if "--refit-target" in argv:
        (tmp_path / "r.yaml").write_text("refit_target: dense\n")
        argv = ["--config", str(tmp_path / "r.yaml"), "--output", "x"]
    assert main(["shrink", "--model", str(tmp_path / "never-loaded"), *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("llmprune: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_cli_reconstruct_reports_the_block_errors(tiny_model_dir, tmp_path, capsys, calibration_text):
    out = tmp_path / "healed"
    code = main(["shrink", "--model", str(tiny_model_dir), "--ratio", "0.25", "--units", "mlp", "--multiple-of", "8",
                 "--calibration", str(calibration_text), "--nsamples", "8", "--seqlen", "16", "--reconstruct",
                 "--reconstruct-steps", "4", "--output", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    assert "block reconstruction: mean held-out block error" in capsys.readouterr().out
    report = json.loads((out / "llmprune_report.json").read_text())
    assert report["reconstruct"]["steps"] == 4 and report["refit_target"] == "local"
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.model.layers[0].mlp.down_proj.in_features == report["kept"]["intermediate_size"]
