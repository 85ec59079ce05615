"""Tiny data and settings for the `llmprune lth` tests: IDX files written here, never downloaded."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """The IDX format: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions,
    each dimension as a big-endian 32-bit integer, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


def tiny_images(count: int, seed: int, classes: int = 4, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 8x8 grey images whose class is where a bright 2x2 patch sits: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 60, size=(count, side, side))
    for i, label in enumerate(labels):
        row, col = 2 * (label // 2) + 1, 2 * (label % 2) + 3
        images[i, row:row + 2, col:col + 2] = 250
    return images.astype(np.uint8), labels.astype(np.uint8)


def tiny_idx_folder(folder: Path, train: int = 240, test: int = 80, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    x, y = tiny_images(train, 0)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", x, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", y, compress)
    x, y = tiny_images(test, 1)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", x, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", y, compress)
    return folder


def tiny_settings(data: Path, output: Path, **overrides) -> dict:
    """A LeNet-preset run shrunk to a second: hidden 12,8, 40 iterations, 2 rounds."""
    values = dict(preset="lenet", data=str(data), output=str(output), hidden="12,8", iterations=40, eval_every=10,
                  rounds=2, lr=5e-3, batch_size=20, validation_size=40, trials=1, progress=False, device="cpu")
    values.update(overrides)
    return values
