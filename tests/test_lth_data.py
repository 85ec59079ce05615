"""`llmprune lth` data: IDX and NumPy folders written by the test, offline errors, the validation split."""
import socket

import numpy as np
import pytest
import torch

from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.tickets.scratch import vision_data
from llmprune.tickets.scratch.vision_data import load_data, read_idx

from lth_helpers import tiny_idx_folder, tiny_images, write_idx


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", array)), array)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", array, compress=True)), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(LLMPruneError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_splits_and_scaling(tmp_path, compress):
    folder = tiny_idx_folder(tmp_path / "idx", train=240, test=80, compress=compress)
    data = load_data(str(folder), seed=3, validation_size=40)
    assert data.input_shape == (1, 8, 8) and data.classes == 4
    assert (len(data.train), len(data.validation), len(data.test)) == (200, 40, 80)
    # standardised with the training split's statistics
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-2
    # the validation split is a seeded draw from the training images, disjoint from the rest
    raw_x, raw_y = tiny_images(240, 0)
    order = torch.randperm(240, generator=torch.Generator().manual_seed(3))
    assert torch.equal(data.validation.y, torch.from_numpy(raw_y.astype(np.int64))[order[:40]])
    assert torch.equal(data.train.y, torch.from_numpy(raw_y.astype(np.int64))[order[40:]])
    other = load_data(str(folder), seed=4, validation_size=40)
    assert not torch.equal(other.validation.y, data.validation.y)


def test_npz_folder(tmp_path):
    x, y = tiny_images(100, 0)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    data = load_data(str(tmp_path), seed=0, validation_size=10)
    assert (len(data.train), len(data.validation), len(data.test)) == (90, 10, 10)


def test_offline_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMPRUNE_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(LLMPruneError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")
    monkeypatch.setattr("llmprune.evaluate.corpora.hub_offline", lambda: False)
    monkeypatch.setattr("llmprune.evaluate.corpora.hub_reachable", lambda: False)
    for name in ("mnist", "cifar10"):
        with pytest.raises(LLMPruneError, match=f"--data {name} needs the network.*fashion-mnist, mnist1d"):
            load_data(name)
    with pytest.raises(LLMPruneError, match="unknown --data"):
        load_data("imagenet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMPruneError, match="neither the four IDX files"):
        load_data(str(tmp_path / "empty"))
    capsys.readouterr()
    assert main(["lth", "--data", "mnist", "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmprune: error: --data mnist needs the network")


def test_mnist1d_is_generated_not_downloaded(monkeypatch):
    import mnist1d.data

    def no_download(*args, **kwargs):
        raise AssertionError("get_dataset downloads; make_dataset must be used")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    args = mnist1d.data.get_dataset_args()
    args.num_samples = 400  # small and fast; the loader uses the standard size
    monkeypatch.setattr(mnist1d.data, "get_dataset_args", lambda: args)
    data = vision_data.load_data("mnist1d", seed=0, validation_size=30)
    assert data.input_shape == (40,) and data.classes == 10
    assert (len(data.train), len(data.validation), len(data.test)) == (290, 30, 80)
