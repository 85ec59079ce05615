"""The imp and glue commands: clear one-line errors, config files, scoring a saved classifier."""
import json

import pytest
import torch

from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.tickets.bert.encoder import load_classifier
from llmprune.tickets.bert.text_tasks import load_task, rt_polarity, wiki_topic
from tests.imp_helpers import synthetic_task_file, tiny_bert_folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imp-cli")
    return tiny_bert_folder(folder / "tiny"), synthetic_task_file(folder / "task.csv", 120)


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # one line of ours, last (transformers may log its own loading notes before it)
    assert lines[-1].startswith("llmprune: error: ")
    assert sum(line.startswith("llmprune: error") for line in lines) == 1
    return lines[-1]


def test_unknown_task(capsys, assets, tmp_path):
    err = error_line(capsys, ["imp", "--model", str(assets[0]), "--task", "sst3", "--output", str(tmp_path / "o")])
    assert "unknown task 'sst3'" in err and "rt-polarity" in err


def test_unreachable_schedule(capsys, assets, tmp_path):
    err = error_line(capsys, ["imp", "--model", str(assets[0]), "--task", str(assets[1]), "--rounds", "3",
                              "--target-sparsity", "0.6", "--output", str(tmp_path / "o")])
    assert "reaches only 30.0%" in err and "target 60.0%" in err


def test_model_without_encoder(capsys, tmp_path, assets):
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(folder)
    with pytest.raises(LLMPruneError, match="no BERT-style encoder"):
        load_classifier(str(folder), 2)
    err = error_line(capsys, ["imp", "--model", str(folder), "--task", str(assets[1]), "--output", str(tmp_path / "o")])
    assert "encoder" in err


def test_config_file_and_flag_override(assets, tmp_path, capsys):
    config = tmp_path / "imp.yaml"
    config.write_text(f"model: {assets[0]}\ntask: {assets[1]}\nrounds: 1\nepochs: 1\nlr: 0.001\n"
                      f"batch-size: 64\nno-progress: true\nbaselines: none\n", encoding="utf-8")
    output = tmp_path / "run"
    assert main(["imp", "--config", str(config), "--output", str(output), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "highest matching sparsity" in out
    report = json.loads((output / "imp_report.json").read_text())
    assert report["settings"]["batch_size"] == 64 and report["settings"]["seed"] == 3
    assert [row["sparsity"] for row in report["rows"]] == [0.0, 0.1]
    assert (output / "imp_report.csv").read_text().startswith("round,sparsity,imp_seed3,imp_mean,imp_std,matching")
    assert (output / "imp_report.png").stat().st_size > 1000
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning-rate: 1\n", encoding="utf-8")
    err = error_line(capsys, ["imp", "--config", str(bad), "--task", "rt-polarity"])
    assert "unknown option(s) learning_rate" in err


def test_glue_scores_a_saved_classifier(assets, tmp_path, capsys):
    model, tokenizer, _ = load_classifier(str(assets[0]), 2, seed=0)
    with torch.no_grad():  # a classifier that always answers "positive"
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-5.0, 5.0]))
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    task = load_task(str(assets[1]))
    labels = [e[2] for e in task.eval_sets["validation"]]
    positives = sum(labels)
    assert main(["glue", "--model", str(tmp_path / "clf"), "--task", str(assets[1]), "--json", str(tmp_path / "s.json")]) == 0
    metrics = json.loads((tmp_path / "s.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(positives / len(labels))
    assert metrics["f1"] == pytest.approx(2 * positives / (2 * positives + (len(labels) - positives)))
    err = error_line(capsys, ["glue", "--model", str(tmp_path / "clf"), "--task", "wiki-topic"])
    assert "2-label head" in err and "12 labels" in err


def test_offline_tasks_have_fixed_splits():
    rt = rt_polarity()
    assert rt.num_labels == 2 and len(rt.train) + len(rt.eval_sets["validation"]) > 12000
    assert 0.08 < len(rt.eval_sets["validation"]) / (len(rt.train) + len(rt.eval_sets["validation"])) < 0.12
    assert rt_polarity().eval_sets["validation"][:5] == rt.eval_sets["validation"][:5]
    assert not {e[0] for e in rt.train} & {e[0] for e in rt.eval_sets["validation"]}
    wiki = wiki_topic()
    assert wiki.num_labels == 12 and len(wiki.label_names) == 12
    assert len(wiki.eval_sets["validation"]) == 1004 and len(wiki.train) == 10033 - 1004


def test_local_task_files(tmp_path):
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": ["no", "yes", "maybe"][i % 3]} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "v.jsonl").write_text(json.dumps({"sentence1": "x", "sentence2": "y", "label": "yes"}) + "\n",
                                      encoding="utf-8")
    task = load_task(str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl"))
    assert task.num_labels == 3 and task.label_names == ["maybe", "no", "yes"] and task.metric == "accuracy"
    assert task.train[1] == ("a1", "b1", 2) and task.eval_sets["validation"] == [("x", "y", 2)]
    (tmp_path / "r.csv").write_text("text,label\n" + "".join(f"s{i},{i / 7:.3f}\n" for i in range(40)), encoding="utf-8")
    regression = load_task(str(tmp_path / "r.csv"))
    assert regression.num_labels == 1 and regression.metric == "correlation"
    assert len(regression.train) + len(regression.eval_sets["validation"]) == 40
    (tmp_path / "nolabel.csv").write_text("text,score\na,1\n", encoding="utf-8")
    with pytest.raises(LLMPruneError, match="no label column"):
        load_task(str(tmp_path / "nolabel.csv"))


def test_glue_without_hub_fails_at_once(monkeypatch, capsys, tmp_path):
    from llmprune.tickets.bert import text_tasks as tasks

    monkeypatch.setattr(tasks, "hub_offline", lambda: False)
    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)
    err = error_line(capsys, ["imp", "--task", "sst2", "--output", str(tmp_path / "o")])
    assert "GLUE task 'sst2' needs the Hugging Face hub" in err and "rt-polarity" in err
