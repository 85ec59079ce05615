"""The offline code corpus (Python standard-library sources): a deterministic, disjoint split by file
name, and the code_next and code_name tasks built from it."""
from __future__ import annotations

import pytest

from llmprune import code_corpus
from llmprune.code_corpus import code_files, code_text, file_key, split_of
from llmprune.data import load_text
from llmprune.evaluate.corpora import load_eval_text
from llmprune.evaluate.tasks import (CODE_NAME_MIN_CHARS, CODE_NAME_TOO_EASY, NEXT_CHOICES, _code_name_items, _code_name_records,
                                     _code_next_records, _python_names)


def _fake_stdlib(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}\nvalue = {len(name)}\n", encoding="utf-8")
    return root


NAMES = [f"pkg{i % 7}/module_{i}.py" for i in range(120)] + ["test/test_x.py", "site-packages/x/y.py", "a/tests/t.py"]


def test_the_split_is_disjoint_complete_and_depends_on_names_only(tmp_path):
    root = _fake_stdlib(tmp_path / "lib", NAMES)
    train = dict(code_files("train", str(root)))
    test = dict(code_files("test", str(root)))
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(NAMES[:120])  # test folders and site-packages are left out
    assert set(test) == {n for n in NAMES[:120] if file_key(n) % 10 == 0} and 4 <= len(test) <= 24
    assert list(test) == sorted(test, key=file_key)  # hash order
    # Another Python version with a different file set: every shared file keeps its split.
    other = _fake_stdlib(tmp_path / "other", NAMES[::2] + ["new/only_here.py", "another.py"])
    for split, known in (("test", test), ("train", train)):
        names = [name for name, _ in code_files(split, str(other))]
        assert [n for n in names if n in NAMES] == [n for n in known if n in NAMES[::2]]



def test_the_real_stdlib_corpus(monkeypatch):
    train, test = code_files("train"), code_files("test")
    names_train, names_test = {n for n, _ in train}, {n for n, _ in test}
    assert not names_train & names_test and len(names_test) > 20 and len(names_train) > 8 * len(names_test)
    assert all(split_of(n) == "test" for n in names_test)
    text = load_text("code", "test")
    assert text == code_text("test") == load_eval_text("code", "test")
    assert len(text) <= code_corpus.CODE_CHARS["test"] and "def " in text
    included = [source for _, source in test if source in text]
    assert len("\n\n".join(included)) == len(text)  # whole test files, nothing else
    assert load_text("code", "train") != text and not any(source in load_text("code", "train") for _, source in test[:5] if len(source) > 500)


def test_code_next_records():
    records = _code_next_records()
    test, train = records["test"], records["train"]
    assert len(test) > 300 and len(train) > len(test)
    files_test = {r["title"].rsplit(":", 1)[0] for r in test}
    files_train = {r["title"].rsplit(":", 1)[0] for r in train}
    assert not files_test & files_train  # the task's documents follow the corpus split
    for k, record in enumerate(test):
        choices, label = record["choices"], record["label"]
        assert label == k % NEXT_CHOICES and len(set(choices)) == NEXT_CHOICES
        assert record["sources"][label] == record["title"]
        answer = choices[label]
        path, line = record["title"].rsplit(":", 1)
        source_line = dict(code_files("test"))[path].splitlines()[int(line) - 1]
        assert source_line.strip() == answer and record["context"].endswith(source_line[: len(source_line) - len(source_line.lstrip())])
        assert all(abs(len(c) - len(answer)) <= 25 for c in choices)  # length-matched distractors
    assert _code_next_records() == records  # deterministic


def test_code_name_records():
    records = _code_name_records()
    test, train = records["test"], records["train"]
    assert len(test) > 500 and len(train) > len(test)
    files = {split: {r["title"].rsplit(":", 1)[0] for r in records[split]} for split in records}
    assert not files["test"] & files["train"]
    sources = dict(code_files("test"))
    for record in test:
        path, line = record["title"].rsplit(":", 1)
        name, target, context, number = record["name"], record["target"], record["context"], int(line)
        lines = sources[path].split("\n")
        # The context is the lines before and the start of this line, which the target continues: the
        # name, after the one character before it (none at the start of a line).
        start = context.rsplit("\n", 1)[-1]
        assert lines[number - 1].startswith(start + target) and context.endswith("\n".join(lines[number - 3 : number - 1]) + "\n" + start)
        assert target == name if not start else (len(target) == len(name) + 1 and target.endswith(name) and not target[0].isalnum())
        start += target[: len(target) - len(name)]
        assert len(name) >= CODE_NAME_MIN_CHARS and name not in CODE_NAME_TOO_EASY and name.isidentifier()
        earlier = {found for found_line, column, found in _python_names(sources[path])
                   if number - 12 <= found_line < number or (found_line == number and column < len(start))}
        assert name in earlier  # already used as a name (not only in a string or a comment) in the context
    assert len({r["name"] for r in test}) > len(test) / 3  # many different names, not one repeated
    assert _code_name_records() == records  # deterministic


def test_code_name_targets_start_a_token_of_a_byte_level_tokenizer():
    """lm-eval scores the tokens of context + target past those of the context alone; had the context
    ended inside a token (".join" is one token in GPT-2-style vocabularies), the name would be scored
    in part or not at all (Qwen2.5's tokenizer left 180 of 900 documents with nothing to score)."""
    from lm_eval.api.model import TemplateLM
    from transformers import AutoTokenizer

    from llmprune.io.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("llama"))  # the bundled model's byte-level BPE

    class Encoder:  # what lm-eval's _encode_pair needs of a causal model
        backend = "causal"

        def tok_encode(self, text, **_):
            return tokenizer.encode(text, add_special_tokens=False)

    for record in _code_name_records()["test"]:
        _, scored = TemplateLM._encode_pair(Encoder(), record["context"], record["target"])
        text = tokenizer.decode(scored)
        # What is scored is the whole name, the character before it where it was not merged into the
        # context's last token, and perhaps the indentation lm-eval moves over: nothing of the context.
        assert text.endswith(record["name"]) and (record["context"] + record["target"]).endswith(text), record["title"]


SOURCE_WITH_NAMES = '''import os
def helper(argument):
    """argument in a docstring is not a use"""
    # neither is documented_name in a comment
    value = argument + 1
    other = "documented_name"
    return value

def second(value):
    return helper(value) + documented_name + helper(argument)
'''


def test_code_name_reads_names_as_python_does(tmp_path, monkeypatch):
    import llmprune.evaluate.tasks as tasks

    names = [name for _, _, name in _python_names(SOURCE_WITH_NAMES)]
    assert names.count("documented_name") == 1 and names.count("argument") == 3 and "def" not in names and "return" not in names
    assert _python_names("def broken(:\n  '''never closed") == []
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(60):  # enough files that the name hash puts some in the test split
        (root / f"m{i}.py").write_text(SOURCE_WITH_NAMES * 6, encoding="utf-8")
    monkeypatch.setattr(tasks, "code_files", lambda split: code_files(split, str(root)))
    targets = {item["name"] for item in _code_name_items("test")}
    # documented_name is used as a name once, on the last line, after only a string and a comment.
    assert targets and targets <= {"argument", "value", "helper", "other", "second"}
    assert "documented_name" not in targets
