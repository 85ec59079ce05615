"""The offline code corpus (Python standard-library sources): a deterministic, disjoint split by file
name, and the code_next task built from it."""
from __future__ import annotations

import pytest

from llmprune import code_corpus
from llmprune.code_corpus import code_files, code_text, file_key, split_of
from llmprune.data import load_text
from llmprune.evaluate.corpora import load_eval_text
from llmprune.evaluate.tasks import NEXT_CHOICES, _code_next_records


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
