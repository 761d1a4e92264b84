"""--dry-run's cost estimate: measured figures where measured, scaling rules elsewhere."""
from __future__ import annotations

import pytest

from models.shapes import arch_shape
from sweep.tune.estimate import MEASURED, trial_cost


def macs(arch, size=32, channels=3, classes=10):
    return sum(layer.macs for layer in arch_shape(arch, classes, channels, (size, size)).layers.values())


def tree(arch, dataset, bits, epochs=10, batch=128, **data):
    return {"data": {"dataset": dataset, **data}, "model": {"arch": arch},
            "quant": {"w_bits": bits, "a_bits": bits}, "train": {"epochs": epochs, "batch_size": batch}}


def test_the_measured_figures_name_their_command_and_device():
    assert {(m.device, m.arch) for m in MEASURED} == {("gpu", "resnet20"), ("cpu", "resnet20")}
    assert all(m.command.startswith("python bench/bench_epoch.py") for m in MEASURED)


def test_resnet20_on_cifar10_takes_the_measured_epoch():
    """50,000 training images at the measured W4A4 2.61 s per 50,000 (H100) and 9.74 s per
    4,660 (CPU), plus the 10,000 test images at a third of that, for 300 epochs."""
    c = trial_cost(tree("resnet20", "cifar10", 4, epochs=300))
    assert (c.train_images, c.eval_images, c.basis["gpu"], c.basis["cpu"]) == (50000, 10000, "measured", "measured")
    assert c.seconds["gpu"] == pytest.approx(300 * (50000 + 10000 / 3) * 2.61 / 50000)
    assert c.seconds["cpu"] == pytest.approx(300 * (50000 + 10000 / 3) * 9.74 / 4660)
    fp = trial_cost(tree("resnet20", "cifar10", 32, epochs=300))
    assert fp.seconds["gpu"] == pytest.approx(300 * (50000 + 10000 / 3) * 1.93 / 50000)
    held = trial_cost(tree("resnet20", "cifar10", 4, val_fraction=0.1))
    assert (held.train_images, held.eval_images) == (45000, 15000)


def test_a_larger_network_scales_by_multiply_accumulates():
    c = trial_cost(tree("resnet56", "cifar10", 2, epochs=1))
    ratio = macs("resnet56") / macs("resnet20")
    assert 3.0 < ratio < 3.2 and c.basis["gpu"].startswith("scaled by MACs (x3.08")
    assert c.seconds["gpu"] == pytest.approx((50000 + 10000 / 3) * 2.61 / 50000 * ratio)


def test_a_tiny_network_on_the_gpu_is_launch_bound_and_a_cpu_lower_bound():
    """mnist_resnet10 (13 layers, 1.07 M MACs at 28x28): on the GPU each step costs at least
    ResNet-20's measured step (2.61 s / 391 steps) x 13/22; on the CPU its MAC scaling says
    it is a lower bound."""
    c = trial_cost(tree("mnist_resnet10", "mnist", 4, epochs=1))
    assert "launch-bound" in c.basis["gpu"] and "lower bound" in c.basis["cpu"]
    per_image = 2.61 / 391 * 13 / 22 / 128
    assert c.seconds["gpu"] == pytest.approx((60000 + 10000 / 3) * per_image)
    assert c.seconds["cpu"] == pytest.approx((60000 + 10000 / 3) * 9.74 / 4660
                                             * macs("mnist_resnet10", 28, 1) / macs("resnet20"))


def test_an_image_folder_is_counted_at_its_crop(tmp_path):
    from tests.support.files import image_folder
    folder = image_folder(tmp_path / "f")
    c = trial_cost(tree("resnet18", "imagefolder", 4, path=str(folder), image_size=64))
    assert (c.image_size, c.train_images, c.eval_images) == (64, 12, 6)
    ratio = macs("resnet18", 64, classes=3) / macs("resnet20")
    assert c.seconds["gpu"] == pytest.approx(10 * (12 + 6 / 3) * 2.61 / 50000 * ratio)
