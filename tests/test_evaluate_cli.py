"""``llmprune eval``: the table, the JSON round trip, and one-line errors for bad input."""
from __future__ import annotations

import json
import math

import pytest

from evaluate_helpers import random_words, tiny_llama, word_tokenizer
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.evaluate import evaluate, read_results, write_results


@pytest.fixture(autouse=True)
def offline(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "llmprune-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-words"
    tiny_llama().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def words_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(random_words(6 * 16 + 3), encoding="utf-8")
    return path


def run_cli(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("llmprune")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("llmprune: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_prints_a_table_and_the_json_round_trips(model_dir, words_file, tmp_path, capsys):
    out_json = tmp_path / "results.json"
    code, out, err = run_cli(
        capsys, "--model", model_dir, "--ppl", words_file, "--seqlen", 16, "--tasks", "rt_sentiment",
        "--limit", 4, "--json", out_json, "--no-progress",
    )
    assert code == 0, err
    results = json.loads(out_json.read_text())
    ppl = results["ppl"][str(words_file)]
    assert (ppl["windows"], ppl["tokens"], ppl["seqlen"]) == (6, 96, 16)
    assert f"{ppl['ppl']:.4f}".rstrip("0").rstrip(".") in out  # the table shows the same number
    assert "rt_sentiment" in out and results["lm_eval"]["tasks"]["rt_sentiment"]["samples"] == 4
    assert results["model"]["path"] == str(model_dir)
    assert read_results(write_results(results, tmp_path / "again.json")) == results


def test_results_with_infinite_perplexity_round_trip(tmp_path):
    results = {"ppl": {"x": {"ppl": math.inf, "nll": 800.0}}, "lm_eval": {"tasks": {"t": {"acc": 0.25}}}}
    assert read_results(write_results(results, tmp_path / "r.json")) == results


def test_python_api_needs_something_to_evaluate():
    with pytest.raises(LLMPruneError, match="nothing to evaluate"):
        evaluate(tiny_llama(), word_tokenizer(), ppl="none", tasks=None)


def test_unknown_task(model_dir, capsys):
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", "none", "--tasks", "rt_sentimnet")
    assert_one_line_error(code, err, "unknown lm-eval task", "'rt_sentimnet'", "rt_sentiment")


@pytest.mark.parametrize("kind", ["missing", "not-utf8"])
def test_unreadable_text_file(kind, model_dir, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    if kind == "not-utf8":
        path.write_bytes(b"\xff\xfe\x00bad \xc3\x28")
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", path)
    assert_one_line_error(code, err, str(path))


def _no_network_retries(monkeypatch) -> list:
    """Record every connection attempt to the hub endpoint (there must be none, or one quick probe)."""
    import socket

    attempts = []
    original = socket.create_connection

    def recording(address, *args, **kwargs):
        attempts.append(address)
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return attempts


def test_hub_dataset_when_offline_fails_fast(model_dir, capsys, monkeypatch):
    attempts = _no_network_retries(monkeypatch)
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", "wikitext2")
    assert_one_line_error(code, err, "wikitext2", "hub")
    assert attempts == []  # offline mode: not even a probe, so no retry loop


def test_hub_task_when_offline_is_a_clear_error(model_dir, words_file, capsys, monkeypatch):
    # arc_easy is a real lm-eval task whose data live on the hub; offline it cannot load. The
    # perplexity asked for in the same run must not be computed first.
    def no_perplexity(*args, **kwargs):
        raise AssertionError("perplexity ran before the failing task")

    monkeypatch.setattr("llmprune.evaluate.run.perplexity", no_perplexity)
    code, out, err = run_cli(capsys, "--model", model_dir, "--ppl", words_file, "--seqlen", 16, "--tasks", "arc_easy", "--limit", 2)
    assert_one_line_error(code, err, "arc_easy")
    assert "perplexity" not in out


def test_window_length_beyond_the_model_context(model_dir, words_file, capsys):
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", words_file, "--seqlen", 4096)
    assert_one_line_error(code, err, "4096", "256")


def test_json_folder_must_exist(model_dir, words_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", words_file, "--json", tmp_path / "nope" / "r.json")
    assert_one_line_error(code, err, "does not exist")


def test_eval_flags_map_onto_evaluate_keywords():
    # The eval command's --seqlen/--batch-size are evaluation's (the prune command's are calibration's).
    from llmprune.cli import build_parser
    from llmprune.cli.evaluate import eval_options

    parser = build_parser("eval")
    args = parser.parse_args(["--model", "m", "--seqlen", "128", "--batch-size", "2", "--eval-windows", "3",
                              "--ppl", "wikipedia,c4", "--tasks", "rt_sentiment", "--limit", "5", "--no-progress"])
    assert eval_options(args) == {"ppl": "wikipedia,c4", "tasks": "rt_sentiment", "num_fewshot": None, "limit": 5,
                                  "max_windows": 3, "progress": False, "seqlen": 128, "batch_size": 2}
    assert eval_options(parser.parse_args(["--model", "m"])) == {
        "ppl": "wikipedia", "tasks": None, "num_fewshot": None, "limit": None, "max_windows": None, "progress": True}


def test_unreachable_hub_without_offline_mode_fails_at_once(model_dir, capsys, monkeypatch):
    # Without HF_HUB_OFFLINE datasets would retry for ~25 s; the tool checks the endpoint first.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    attempts = _no_network_retries(monkeypatch)
    code, _, err = run_cli(capsys, "--model", model_dir, "--ppl", "c4")
    assert_one_line_error(code, err, "'c4'", "not reachable")
    assert len(attempts) == 1  # one probe of the endpoint, then the error: no retry loop
