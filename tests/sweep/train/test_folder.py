"""dataset: imagefolder: a folder of image files listed, checked and streamed through
DataLoader workers with the standard ImageNet transforms; one epoch of a quantized ResNet-18."""
from __future__ import annotations

import math
import pickle
import types

import numpy as np
import pytest
import torch

from sweep.config import resolve_trial
from sweep.config.files import check_data
from sweep.train.data import IMAGENET_MEAN, IMAGENET_STD, DataError, FileSplit, load_data
from sweep.train.folder import FolderLoader
from sweep.train.loader import make_loader
from tests.support.files import image_folder


def cfg(path, **kw):
    base = dict(dataset="imagefolder", path=str(path), root=None, val_fraction=0.0, split_seed=0,
                mean=None, std=None, crop_pad=None, flip=None, image_size=None, workers=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("images"))


def test_the_folder_is_listed_not_read_and_travels_as_file_names(folder):
    b = load_data(cfg(folder))
    assert isinstance(b.train, FileSplit) and isinstance(b.val, FileSplit) and b.test is None
    assert b.classes == ("cat", "dog", "emu") and b.num_classes == 3 and b.in_channels == 3
    assert b.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and len(b.val) == 6
    assert b.train.path(4).endswith("train/dog/dog_0.jpg")
    assert (b.image_size, b.mean, b.std, b.flip) == ((224, 224), IMAGENET_MEAN, IMAGENET_STD, True)
    again = pickle.loads(pickle.dumps(b))                # as Ray's object store carries it
    assert again.train.path(4) == b.train.path(4) and torch.equal(again.val.y, b.val.y)
    held = load_data(cfg(folder, val_fraction=0.25))
    assert (len(held.train), len(held.val), len(held.test)) == (9, 3, 6)
    assert set(map(bytes, held.train.files)).isdisjoint(map(bytes, held.val.files))


def test_evaluation_is_resize_256_center_crop_224_normalised(folder):
    """Each evaluation image is torchvision's Resize(256) + CenterCrop(224) of the file,
    normalised with the ImageNet mean and std, in file order."""
    from PIL import Image
    from torchvision import transforms as T
    b = load_data(cfg(folder))
    x, y = next(make_loader(b, "val", 4).epoch(0))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1]
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    want = torch.stack([ref(Image.open(b.val.path(i)).convert("RGB")) for i in range(4)])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-5)


def test_training_crops_are_random_resized_224_seeded_and_worker_independent(folder):
    """RandomResizedCrop(224) + flip: fresh each epoch, the same for the same (seed, epoch)
    whether 0 or 2 worker processes decode; a permutation of the split each epoch."""
    b = load_data(cfg(folder))
    inline = FolderLoader(b.train, 6, mean=b.mean, std=b.std, train=True, seed=3, workers=0)
    two = FolderLoader(b.train, 6, mean=b.mean, std=b.std, train=True, seed=3, workers=2)
    e0 = list(inline.epoch(0))
    assert len(e0) == len(inline) == 2 and e0[0][0].shape == (6, 3, 224, 224)
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == sorted(b.train.y.tolist())
    for (xa, ya), (xb, yb) in zip(e0, two.epoch(0)):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    e1 = list(inline.epoch(1))
    assert not torch.equal(torch.cat([y for _, y in e0]), torch.cat([y for _, y in e1])) or \
        not torch.equal(e0[0][0], e1[0][0])
    # a crop of a 40x30 image resized to 224 is smooth, not the zero padding of a pad crop
    assert (e0[0][0] * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).std(dim=(2, 3)).max() < 0.5


def test_bad_folders_say_what_and_where(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*nothere does not exist; an image folder holds train/"):
        load_data(cfg(tmp_path / "nothere"))
    root = image_folder(tmp_path / "a", classes=("x", "y"), n_train=1, n_val=1)
    (root / "train" / "z").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/z holds no images"):
        load_data(cfg(root))
    (root / "train" / "z").rmdir()
    (root / "val" / "w").mkdir()
    with pytest.raises(DataError, match=r"val has class folders that train/ lacks: w"):
        load_data(cfg(root))
    (root / "val" / "w").rmdir()
    bad = root / "train" / "x" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    b = load_data(cfg(root))
    with pytest.raises(DataError, match=r"broken\.jpg cannot be read as an image"):
        list(make_loader(b, "train", 4, train=True).epoch(0))
    bad.unlink()
    for d in (root / "val" / "x", root / "val" / "y"):
        for f in d.iterdir():
            f.unlink()
    with pytest.raises(DataError, match=r"val holds no images, and val_acc is scored on it"):
        load_data(cfg(root))
    only_train = image_folder(tmp_path / "b", n_train=1, n_val=0)
    for d in (only_train / "val").iterdir():
        d.rmdir()
    (only_train / "val").rmdir()
    with pytest.raises(DataError, match=r"has no val/ \(or test/\) folder"):
        load_data(cfg(only_train))


def test_config_checks_see_the_folder_before_a_run(folder, tmp_path):
    def problem(**data):
        return check_data(resolve_trial({"data": {"dataset": "imagefolder", **data},
                                         "model": {"arch": "resnet18"}}))
    assert problem(path=str(folder)) is None
    key, msg = problem(path=str(tmp_path / "none"))
    assert key == "data.path" and "does not exist" in msg
    assert problem(path=str(folder), crop_pad=4)[0] == "data.crop_pad"
    assert problem(path=str(folder), mean=[0.5], std=[0.5])[0] == "data.mean"
    key, msg = check_data(resolve_trial({"data": {"dataset": "cifar10", "workers": 4}}))
    assert key == "data.workers" and "applies to dataset: imagefolder" in msg


def test_one_epoch_of_quantized_resnet18_on_an_image_folder(folder):
    """The engine trains a W4A4 ImageNet-family ResNet-18 for one epoch from the folder
    (half of train/: one step of 6 crops of 32 pixels, seconds on a CPU; two decoding
    workers) and scores the held-out half of train/ and the val/ images."""
    tree = {"data": {"dataset": "imagefolder", "path": str(folder), "image_size": 32, "workers": 2,
                     "val_fraction": 0.5},
            "model": {"arch": "resnet18"}, "quant": {"w_bits": 4, "a_bits": 4, "scheme": "apot"},
            "train": {"epochs": 1, "batch_size": 6, "lr": 0.01, "device": "cpu", "compile": False}}
    from sweep.train.engine import Trainer
    tr = Trainer(resolve_trial(tree), log=lambda s: None)
    assert tr.model.quant_policy.family == "imagenet" and tr.model.fc.out_features == 3
    assert isinstance(tr.train_loader, FolderLoader) and tr.train_loader.workers == 2
    assert len(tr.train_loader) == 1 and len(tr.val_loader.dataset) == len(tr.test_loader.dataset) == 6
    before = tr.model.layer1[0].conv1.weight.detach().clone()
    summary = tr.run()
    m = summary["last"]
    assert m["epoch"] == 1 and math.isfinite(m["train_loss"])
    assert 0 <= m["val_acc"] <= 100 and 0 <= m["test_acc"] <= 100
    assert not torch.equal(before, tr.model.layer1[0].conv1.weight)
    assert np.isfinite([v for k, v in m.items() if k.startswith("alpha/")]).all()
