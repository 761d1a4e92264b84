"""sweep.train.data and sweep.train.loader: sources, defaults, splits and the on-device batch path."""
from __future__ import annotations

import pickle
import re
import socket
import time
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sweep.train import data as data_mod
from sweep.train.loader import BatchLoader, crop_flip
from sweep.train.data import DATASETS, DataBundle, DataError, Split, load_data


def cfg(**kw):
    base = dict(dataset="synthetic", root=None, path=None, val_fraction=0.0, split_seed=0,
                mean=None, std=None, crop_pad=None, flip=None, synthetic=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def synth(**kw):
    s = dict(train_size=200, test_size=100, image_size=16, channels=3, num_classes=4)
    s.update(kw)
    return types.SimpleNamespace(**s)


def write_npz(path, n_train=300, n_test=50, shape=(8, 8, 3), stats=True, **extra):
    """Images whose first two pixels spell their index, so a split can be traced back."""
    def images(n):
        x = np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)
        flat = x.reshape(n, -1)
        flat[:, 0], flat[:, 1] = np.arange(n) % 256, np.arange(n) // 256
        return x
    arrays = dict(x_train=images(n_train), y_train=np.arange(n_train) % 3,
                  x_test=images(n_test), y_test=np.arange(n_test) % 3,
                  classes=np.array(["a", "b", "c"]))
    if stats:
        channels = shape[2] if len(shape) == 3 else 1
        arrays.update(mean=np.full(channels, 0.5, np.float32), std=np.full(channels, 0.25, np.float32))
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def index_of(split: Split) -> np.ndarray:
    flat = split.x.permute(0, 2, 3, 1).reshape(len(split), -1).numpy().astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


# ---------------------------------------------------------------- sources and defaults

def test_cifar_npz_shapes_dtypes_and_file_stats(cifar_npz):
    b = load_data(cfg(dataset="npz", path=str(cifar_npz)))
    assert b.train.x.shape == (4660, 3, 32, 32) and b.train.x.dtype == torch.uint8
    assert b.train.x.is_contiguous() and b.train.y.dtype == torch.int64
    assert len(b.val) == 846 and b.test is None                  # val is the test set
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 3, (32, 32))
    assert b.classes[0] == "airplane"
    assert b.mean == pytest.approx((0.491, 0.482, 0.447)) and b.std == pytest.approx((0.247, 0.243, 0.262))
    raw = np.load(cifar_npz)["x_train"]
    assert torch.equal(b.train.x[7], torch.from_numpy(raw[7]).permute(2, 0, 1))


def test_mnist_npz_is_single_channel_without_flip(mnist_npz):
    b = load_data(cfg(dataset="npz", path=str(mnist_npz)))
    assert (b.in_channels, b.image_size) == (1, (28, 28))
    assert b.train.x.shape == (14262, 1, 28, 28)
    assert b.mean == pytest.approx((0.131,)) and b.std == pytest.approx((0.308,))
    assert b.flip is False and b.crop_pad == 0


def test_torchvision_defaults_follow_the_spec():
    assert data_mod._TORCHVISION["cifar10"]["mean"] == (0.491, 0.482, 0.447)
    assert data_mod._TORCHVISION["cifar100"]["std"] == (0.247, 0.243, 0.262)
    assert (data_mod._TORCHVISION["cifar10"]["crop_pad"], data_mod._TORCHVISION["cifar10"]["flip"]) == (4, True)
    mnist = data_mod._TORCHVISION["mnist"]
    assert (mnist["mean"], mnist["std"], mnist["crop_pad"], mnist["flip"]) == ((0.131,), (0.308,), 0, False)


def test_npz_stats_computed_when_absent_and_said(tmp_path):
    path = write_npz(tmp_path / "d.npz", stats=False)
    b = load_data(cfg(dataset="npz", path=str(path)))
    x = b.train.x.double() / 255
    assert b.mean == pytest.approx(tuple(x.mean(dim=(0, 2, 3)).tolist()), abs=1e-4)
    assert b.std == pytest.approx(tuple(x.std(dim=(0, 2, 3), unbiased=False).tolist()), abs=1e-4)
    assert any("computed from the 300 training images" in n for n in b.notes)
    b = load_data(cfg(dataset="npz", path=str(path), mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5],
                      crop_pad=2, flip=True))
    assert (b.mean, b.std, b.crop_pad, b.flip) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 2, True)


def test_npz_file_stats_outrank_config_and_it_says_so(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    b = load_data(cfg(dataset="npz", path=str(path), mean=[0.1, 0.2, 0.3]))
    assert b.mean == (0.5, 0.5, 0.5)
    assert any("data.mean/data.std ignored" in n for n in b.notes)


def test_gray_npz_gets_a_channel_axis(tmp_path):
    path = write_npz(tmp_path / "g.npz", shape=(6, 5))
    b = load_data(cfg(dataset="npz", path=str(path)))
    assert b.train.x.shape == (300, 1, 6, 5) and b.image_size == (6, 5)


def test_synthetic_is_deterministic_and_learnable():
    c = cfg(synthetic=synth())
    a, b = load_data(c), load_data(c)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert a.train.x.shape == (200, 3, 16, 16) and a.num_classes == 4 and len(a.val) == 100
    assert torch.bincount(a.train.y).tolist() == [50] * 4
    other = load_data(cfg(synthetic=synth(seed=1)))
    assert not torch.equal(a.train.x, other.train.x)
    # nearest class mean (fitted on train) classifies the test images: the classes differ
    centroids = torch.stack([a.train.x[a.train.y == k].float().mean(0) for k in range(4)])
    dist = torch.cdist(a.val.x.float().flatten(1), centroids.flatten(1))
    assert (dist.argmin(1) == a.val.y).float().mean() > 0.9
    assert any("computed" in n for n in a.notes)


# ---------------------------------------------------------------- errors

def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(DataError, match="unknown dataset 'cifar11'; expected one of: ") as e:
        load_data(cfg(dataset="cifar11"))
    listed = str(e.value).split("expected one of: ")[1].split(", ")
    assert sorted(listed) == sorted(DATASETS) and "cifar10" in listed


def test_missing_npz_is_named(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=f"npz file not found: {missing}"):
        load_data(cfg(dataset="npz", path=str(missing)))


def test_npz_without_arrays_says_which(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="lacks y_train, x_test, y_test"):
        load_data(cfg(dataset="npz", path=str(tmp_path / "bad.npz")))


def test_mean_with_wrong_channel_count(tmp_path):
    with pytest.raises(DataError, match="one value per channel: .* has 3"):
        load_data(cfg(synthetic=synth(), mean=[0.5], std=[0.2]))


def refuse(*args, **kwargs):
    raise OSError("network is unreachable")


def hang(*args, **kwargs):
    time.sleep(60)


@pytest.mark.parametrize("connect", [refuse, hang], ids=["refused", "hung"])
def test_cifar10_offline_fails_fast_with_the_expected_folder(tmp_path, monkeypatch, connect):
    monkeypatch.setattr(socket, "create_connection", connect)
    start = time.perf_counter()
    root = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=rf"CIFAR-10 not found under {root} \(expected "
                                        r"cifar-10-batches-py/\); no network to download it .*"
                                        rf"extract cifar-10-python.tar.gz in {root} \(it unpacks "
                                        r"to cifar-10-batches-py/\), or use dataset: npz"):
        load_data(cfg(dataset="cifar10", root=str(tmp_path)))
    assert time.perf_counter() - start < 5
    assert list(tmp_path.iterdir()) == []                  # nothing half-downloaded


def test_mnist_offline_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataError, match=r"MNIST not found under .*expected MNIST/raw/\).*"
                                        r"train-images-idx3-ubyte"):
        load_data(cfg(dataset="mnist", root=str(tmp_path)))


def test_cifar10_folder_is_read_through_torchvision(tmp_path, cifar_npz, monkeypatch):
    """A real-format cifar-10-batches-py/ (built from the subset; md5 check bypassed)."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(socket, "create_connection", refuse)     # must not be needed
    src = np.load(cifar_npz)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    def batch(name, x, y):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": list(y)}, f)
    for i in range(5):
        batch(f"data_batch_{i + 1}", src["x_train"][4 * i:4 * i + 4], src["y_train"][4 * i:4 * i + 4])
    batch("test_batch", src["x_test"][:6], src["y_test"][:6])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(src["classes"])}, f)
    b = load_data(cfg(dataset="cifar10", root=str(tmp_path)))
    assert b.train.x.shape == (20, 3, 32, 32) and len(b.val) == 6 and b.classes[9] == "truck"
    assert torch.equal(b.train.x, torch.from_numpy(src["x_train"][:20]).permute(0, 3, 1, 2))
    assert torch.equal(b.val.y, torch.from_numpy(src["y_test"][:6]))
    assert (b.mean, b.std, b.crop_pad, b.flip) == ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262), 4, True)


def test_mnist_folder_is_read_through_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", refuse)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], ">i4").tobytes() + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([2049, n], ">i4").tobytes() + (np.arange(n) % 10).astype(np.uint8).tobytes())
    b = load_data(cfg(dataset="mnist", root=str(tmp_path), val_fraction=0.25))
    assert b.train.x.shape == (9, 1, 28, 28) and len(b.val) == 3 and len(b.test) == 5
    assert (b.mean, b.std, b.crop_pad, b.flip, b.num_classes) == ((0.131,), (0.308,), 0, False, 10)


# ---------------------------------------------------------------- splits

def test_val_split_sizes_and_fixed_by_split_seed(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    c = cfg(dataset="npz", path=str(path), val_fraction=0.2, split_seed=3)
    a, b = load_data(c), load_data(c)
    assert (len(a.train), len(a.val), len(a.test)) == (240, 60, 50)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    train_idx, val_idx = index_of(a.train), index_of(a.val)
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(300))
    assert np.array_equal(a.val.y.numpy(), val_idx % 3)             # labels travel with images
    assert np.array_equal(index_of(a.test), np.arange(50))           # the real test set
    other = load_data(cfg(dataset="npz", path=str(path), val_fraction=0.2, split_seed=4))
    assert set(index_of(other.val)) != set(val_idx)


def test_val_fraction_too_large(tmp_path):
    with pytest.raises(DataError, match="val_fraction=1.0 holds out 200"):
        load_data(cfg(synthetic=synth(), val_fraction=1.0))


def test_bundle_pickles_through_numpy():
    b = load_data(cfg(synthetic=synth(), val_fraction=0.25))
    c = pickle.loads(pickle.dumps(b, protocol=5))
    assert torch.equal(c.train.x, b.train.x) and torch.equal(c.test.y, b.test.y)
    assert (c.mean, c.classes, c.notes, c.image_size) == (b.mean, b.classes, b.notes, b.image_size)
    arrays = b.to_arrays()
    for v in arrays.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False                    # as Ray's object store hands them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = DataBundle.from_arrays(arrays)
    assert d.train.x.data_ptr() == b.train.x.data_ptr()  # shared, not copied


# ---------------------------------------------------------------- batches

def naive_crop_flip(img, pad, dy, dx, flip):
    h, w = img.shape[1:]
    out = F.pad(img, (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
    return out.flip(2) if flip else out


def test_crop_flip_equals_per_image_pad_and_slice_for_every_offset():
    x = torch.randint(0, 256, (2 * 81, 3, 7, 5), dtype=torch.uint8)
    dy, dx = torch.arange(81).repeat(2) // 9, torch.arange(81).repeat(2) % 9
    flips = torch.arange(162) >= 81
    got = crop_flip(x, 4, dy, dx, flips)
    want = torch.stack([naive_crop_flip(x[i], 4, dy[i], dx[i], flips[i]) for i in range(162)])
    assert torch.equal(got, want)


def normalised(x_uint8, mean, std):
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (x_uint8.double() / 255 - m) / s


@pytest.fixture(scope="module")
def bundle():
    return load_data(cfg(synthetic=synth(train_size=100, test_size=30), crop_pad=4, flip=True))


def test_train_batches_equal_naive_augmentation(bundle):
    loader = BatchLoader(bundle.train, 32, "cpu", bundle.mean, bundle.std, train=True,
                         crop_pad=4, flip=True, seed=5)
    order, dy, dx, flips = loader.draw(2)
    assert set(dy.tolist()) <= set(range(9)) and 0 < flips.sum() < 100
    xs, ys = zip(*loader.epoch(2))
    assert [len(y) for y in ys] == [32, 32, 32, 4] and len(loader) == 4
    want = torch.stack([naive_crop_flip(bundle.train.x[j], 4, dy[i], dx[i], flips[i])
                        for i, j in enumerate(order.tolist())])
    got = torch.cat(xs)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), normalised(want, bundle.mean, bundle.std), rtol=0, atol=1e-6)
    assert torch.equal(torch.cat(ys), bundle.train.y[order])


def test_eval_batches_are_in_order_normalised_and_whole(bundle):
    loader = BatchLoader(bundle.val, 8, "cpu", bundle.mean, bundle.std, train=False,
                         crop_pad=4, flip=True, drop_last=True)
    xs, ys = zip(*loader)
    assert len(loader) == 4 and [len(y) for y in ys] == [8, 8, 8, 6]
    assert torch.equal(torch.cat(ys), bundle.val.y)
    want = normalised(bundle.val.x, bundle.mean, bundle.std)
    assert torch.allclose(torch.cat(xs).double(), want, rtol=0, atol=1e-6)


def test_epoch_order_is_fixed_by_seed_and_epoch(bundle):
    def epoch(seed, e):
        loader = BatchLoader(bundle.train, 16, "cpu", bundle.mean, bundle.std, train=True,
                             crop_pad=4, flip=True, seed=seed, drop_last=True)
        assert len(loader) == 6
        return [torch.cat(t) for t in zip(*loader.epoch(e))]
    a, b = epoch(0, 3), epoch(0, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and len(a[1]) == 96
    assert not torch.equal(epoch(0, 4)[1], a[1]) and not torch.equal(epoch(1, 3)[1], a[1])
    loader = BatchLoader(bundle.train, 16, "cpu", bundle.mean, bundle.std, train=True, seed=0)
    first, second = (torch.cat([y for _, y in loader]) for _ in range(2))
    assert torch.equal(first, torch.cat([y for _, y in loader.epoch(0)]))
    assert torch.equal(second, torch.cat([y for _, y in loader.epoch(1)]))


def test_channels_last_and_bfloat16(bundle):
    loader = BatchLoader.from_bundle(bundle, "train", 16, train=True, seed=1,
                                     channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.shape == (16, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = BatchLoader.from_bundle(bundle, "train", 16, train=True, seed=1)
    assert torch.equal(x, next(iter(ref))[0].to(torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(bundle):
    def batches(device):
        loader = BatchLoader.from_bundle(bundle, "train", 32, device, train=True, seed=7)
        return [(x.cpu(), y.cpu()) for x, y in loader.epoch(1)]
    for (xc, yc), (xg, yg) in zip(batches("cpu"), batches("cuda")):
        assert torch.equal(yc, yg) and torch.allclose(xc, xg, rtol=0, atol=1e-6)


def test_registry_names():
    assert set(DATASETS) == {"cifar10", "cifar100", "mnist", "npz", "synthetic", "imagefolder"}


def test_npz_augmentation_defaults_follow_the_images(cifar_npz, mnist_npz):
    colour = load_data({"dataset": "npz", "path": str(cifar_npz)})
    assert (colour.crop_pad, colour.flip) == (4, True)          # CIFAR's recipe
    grey = load_data({"dataset": "npz", "path": str(mnist_npz)})
    assert (grey.crop_pad, grey.flip) == (0, False)             # MNIST's
    overridden = load_data({"dataset": "npz", "path": str(cifar_npz), "crop_pad": 0, "flip": False})
    assert (overridden.crop_pad, overridden.flip) == (0, False)


def test_dataset_registry_and_config_agree():
    from sweep.config.schema import DATASET_NAMES
    assert set(DATASETS) == set(DATASET_NAMES)
