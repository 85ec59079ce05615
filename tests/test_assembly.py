"""Models shipped as part packages: assembled in order, checked by size and sha256, written atomically;
a missing or wrong part is one clear line naming the set-up command (tiny fake parts, no download)."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.io import assembly, loading

PARTS = [b"GGUF-part-one|", b"part-two|", b"three"]


def fake_model(tmp_path, monkeypatch, parts=PARTS, **changes) -> assembly.PartedModel:
    """Part packages fakepartN (N = 1..3) on sys.path, each holding data/partNN.bin."""
    root = tmp_path / "site"
    for n, content in enumerate(parts, start=1):
        if content is None:
            continue
        package = root / f"fakepart{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('a part package is located, never imported')\n")
        (package / "data" / f"part{n:02d}.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    whole = b"".join(PARTS)
    model = assembly.PartedModel(
        name="qwen-coder", package="fakepart{n}", distribution="fake-part{n}", version="0.1",
        part_path="data/part{n:02d}.bin", count=len(parts), size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(), file_name="fake.gguf",
    )
    return dataclasses.replace(model, **changes)


def test_parts_are_assembled_in_order_and_checked(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch)
    path = assembly.assembled_file(model)
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert assembly.assembled_file(model) == path  # the second use reads the cached file


@pytest.mark.parametrize("change,message", [
    (dict(size=999), "add up to 28 bytes, not 999"),
    (dict(sha256="0" * 64), "sha256 is"),
])
def test_wrong_parts_are_refused_and_nothing_is_left(tmp_path, monkeypatch, change, message):
    model = fake_model(tmp_path, monkeypatch, **change)
    with pytest.raises(LLMPruneError, match=message) as caught:
        assembly.assembled_file(model)
    assert "./scripts/setup.sh --models qwen-coder" in str(caught.value) and "\n" not in str(caught.value)
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half-written or wrong file


def test_the_alias_without_the_set_up_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    model = fake_model(tmp_path, monkeypatch, parts=[PARTS[0], None, PARTS[2]])
    monkeypatch.setitem(loading.ALIASES, "qwen-coder", model)
    code = main(["--model", "qwen-coder", "--method", "magnitude", "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("llmprune: error: the qwen-coder model is not set up (part 2 of 3, fake-part2, is not installed)")
    assert lines[0].endswith("run ./scripts/setup.sh --models qwen-coder")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "models" / "fake.gguf").exists()


def test_the_assembly_command_of_the_set_up_script(tmp_path, monkeypatch, capsys):
    model = fake_model(tmp_path, monkeypatch, sha256="1" * 64)
    monkeypatch.setitem(assembly.PARTED_MODELS, "qwen-coder", model)
    assert assembly.main(["qwen-coder"]) == 2
    assert capsys.readouterr().err.startswith("llmprune: error: the qwen-coder parts' sha256 is")
    assert assembly.main(["mistral-70b"]) == 2
    assert "unknown model 'mistral-70b'" in capsys.readouterr().err
