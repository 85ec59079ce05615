"""Data for the original lottery-ticket experiments, offline first, held as tensors in memory.

``fashion-mnist``: the standard IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``, or ``$LLMPRUNE_FASHION_MNIST``). ``mnist1d``:
generated procedurally by the ``mnist1d`` package's ``make_dataset`` (never its download
path). ``mnist`` and ``cifar10``: through ``datasets`` from the Hugging Face hub when the
network is there, a one-line error otherwise. A folder: the four IDX files (optionally
gzipped) or a ``data.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.
``sum-of-two``: the toy regression y = x1 + x2, trained on [-1, 1]^2, tested on [1, 2]^2.

The validation split is drawn from the training set with the seed (5,000 examples for the
MNIST-like sets and CIFAR-10, as in the paper). Inputs are scaled by the training split's
mean and standard deviation (per channel for colour images).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import LLMPruneError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
HUB_DATASETS = {"mnist": ("ylecun/mnist", "image", "label"), "cifar10": ("uoft-cs/cifar10", "img", "label")}
DATA_NAMES = ("fashion-mnist", "mnist1d", "mnist", "cifar10", "sum-of-two")
DEFAULT_VALIDATION = {"mnist1d": 500, "sum-of-two": 200}  # the rest: 5,000
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    validation: Split
    test: Split
    classes: int  # 0: regression

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.validation.to(device), self.test.to(device), self.classes)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, element type, dimensions, big-endian data), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise LLMPruneError(f"{path} is not an IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise LLMPruneError(f"{path}: {data.size} values for dimensions {dims}")
    return data.reshape(dims)


def _idx_folder(folder: Path) -> dict[str, np.ndarray] | None:
    arrays = {}
    for key, stem in IDX_FILES.items():
        found = [folder / n for n in (stem, stem + ".gz", stem.replace("-idx", ".idx")) if (folder / n).is_file()]
        if not found:
            return None
        arrays[key] = read_idx(found[0])
    return arrays


def load_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = _idx_folder(folder)
    if arrays is not None:
        return arrays
    if (folder / "data.npz").is_file():
        with np.load(folder / "data.npz") as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz]
            if missing:
                raise LLMPruneError(f"{folder / 'data.npz'} lacks {', '.join(missing)}")
            return {"train_x": npz["x_train"], "train_y": npz["y_train"], "test_x": npz["x_test"], "test_y": npz["y_test"]}
    raise LLMPruneError(f"{folder} holds neither the four IDX files ({', '.join(IDX_FILES.values())}, "
                        "optionally .gz) nor a data.npz")


def fashion_mnist_arrays() -> dict[str, np.ndarray]:
    folder = Path(os.environ.get("LLMPRUNE_FASHION_MNIST", FASHION_MNIST_DIR))
    if _idx_folder(folder) is None:
        raise LLMPruneError(f"Fashion-MNIST is not in {folder}: install it with 'apt-get install dataset-fashion-mnist' "
                            "(as root, after apt-get update), or pass --data FOLDER holding its four IDX files")
    return load_folder(folder)


def mnist1d_arrays() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise LLMPruneError("--data mnist1d needs the mnist1d package: pip install mnist1d") from None
    # generated, never downloaded: the standard 4,000 / 1,000 examples of 40 values
    data = make_dataset(get_dataset_args())
    return {"train_x": data["x"], "train_y": data["y"], "test_x": data["x_test"], "test_y": data["y_test"]}


def hub_arrays(name: str) -> dict[str, np.ndarray]:
    from ...evaluate.corpora import hub_offline, hub_reachable

    repo, image_key, label_key = HUB_DATASETS[name]
    hint = "offline, use --data fashion-mnist, mnist1d or a folder of IDX files / a data.npz"
    if not hub_offline() and not hub_reachable():
        raise LLMPruneError(f"--data {name} needs the network (Hugging Face hub {repo}); {hint}")
    try:
        import datasets

        loaded = datasets.load_dataset(repo)
    except Exception as exc:
        raise LLMPruneError(f"cannot load {name} from the hub ({type(exc).__name__}); {hint}") from None
    arrays = {}
    for split, key in (("train", "train"), ("test", "test")):
        rows = loaded[split]
        arrays[f"{key}_x"] = np.stack([np.asarray(image) for image in rows[image_key]])
        arrays[f"{key}_y"] = np.asarray(rows[label_key])
    return arrays


def sum_of_two(seed: int, train: int = 1000, validation: int = 200, test: int = 1000) -> Dataset:
    generator = torch.Generator().manual_seed(seed)

    def split(count: int, low: float, high: float) -> Split:
        x = low + (high - low) * torch.rand(count, 2, generator=generator)
        return Split(x, x.sum(dim=1, keepdim=True))

    return Dataset("sum-of-two", split(train, -1, 1), split(validation, -1, 1), split(test, 1, 2), 0)


def _as_inputs(x: np.ndarray) -> torch.Tensor:
    """Float tensors: vectors as they are, images as (N, channels, height, width)."""
    x = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: IDX buffers are read-only
    if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()  # NHWC (CIFAR as stored) -> NCHW
    if x.dim() == 3:
        x = x.unsqueeze(1)  # grey images get a channel
    return x


def load_data(name: str, seed: int = 0, validation_size: int | None = None) -> Dataset:
    """One of ``DATA_NAMES`` or a folder, split into train / validation / test tensors."""
    if name == "sum-of-two":
        return sum_of_two(seed)
    if name == "fashion-mnist":
        arrays = fashion_mnist_arrays()
    elif name == "mnist1d":
        arrays = mnist1d_arrays()
    elif name in HUB_DATASETS:
        arrays = hub_arrays(name)
    elif Path(name).expanduser().is_dir():
        arrays = load_folder(Path(name).expanduser())
    else:
        raise LLMPruneError(f"unknown --data '{name}' (use {', '.join(DATA_NAMES[:4])} or a folder)")
    x_train, x_test = _as_inputs(arrays["train_x"]), _as_inputs(arrays["test_x"])
    y_train = torch.from_numpy(np.asarray(arrays["train_y"]).astype(np.int64))
    y_test = torch.from_numpy(np.asarray(arrays["test_y"]).astype(np.int64))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise LLMPruneError(f"{name}: images and labels differ in number")
    size = DEFAULT_VALIDATION.get(name, 5000) if validation_size is None else validation_size
    if not 0 < size < len(x_train):
        raise LLMPruneError(f"--validation-size must be between 1 and {len(x_train) - 1} for {name} (got {size})")
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:size], order[size:]
    # standardise with the training split's statistics (per channel for images)
    dims = [0] + list(range(2, x_train.dim())) if x_train.dim() == 4 else list(range(x_train.dim()))
    mean = x_train[train_idx].mean(dim=dims, keepdim=True)
    std = x_train[train_idx].std(dim=dims, keepdim=True).clamp_min(1e-8)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    label = name if name in DATA_NAMES else Path(name).name
    return Dataset(label, Split(x_train[train_idx].contiguous(), y_train[train_idx]),
                   Split(x_train[val_idx].contiguous(), y_train[val_idx]), Split(x_test, y_test), classes)
