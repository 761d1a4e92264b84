"""Clipping thresholds fitted to data (quant.calibrate) against hand-computed optima."""
import math

import pytest
import torch

import models
from quant import ActQuantizer, QuantPolicy, WeightQuantizer
from quant.calibrate import GRID, fit_alphas, mse_alpha


def _ternary_mse(alpha: float) -> float:
    """E[(Q(w) - w)^2] for w ~ N(0, 1) and the 2-bit weight rule {0, +-alpha}, threshold
    alpha/2: E[w^2] - 2 alpha E[|w|; |w| > t] + alpha^2 P(|w| > t)."""
    t = alpha / 2
    tail = math.erfc(t / math.sqrt(2))                          # P(|w| > t)
    first = 2 * math.exp(-t * t / 2) / math.sqrt(2 * math.pi)   # E[|w|; |w| > t]
    return 1 - 2 * alpha * first + alpha * alpha * tail


def test_two_bit_weights_of_a_gaussian_get_the_ternary_optimum():
    """The analytic optimum of the 2-bit rule for a standard normal is alpha = 1.224; a
    normalised Gaussian weight tensor gets it to within the search grid's step."""
    best = min((k / 10000 for k in range(5000, 20000)), key=_ternary_mse)
    assert best == pytest.approx(1.224, abs=1e-3)
    u = (torch.arange(1 << 16, dtype=torch.float64) + 0.5) / (1 << 16)
    w = (torch.special.erfinv(2 * u - 1) * math.sqrt(2) * 0.05 + 0.01).float()   # normal quantiles
    q = WeightQuantizer(2, "apot", family="imagenet")
    top = float(((w - w.mean()) / w.std()).abs().max())
    assert mse_alpha(q, w) == pytest.approx(best, abs=2 * top / GRID**2 + 0.005)
    assert q.wgt_alpha.item() == 3.0                  # its own threshold untouched


def test_uniform_activations_are_clipped_where_the_two_errors_balance():
    """x uniform on [0, 4], 2-bit uniform levels {0, 1/3, 2/3, 1} alpha: the rounding error
    alpha^3 / 432 plus the clipping error (4 - alpha)^3 / 12 is least at alpha = 24/7."""
    x = torch.linspace(0, 4, 1 << 16)
    assert mse_alpha(ActQuantizer(2, "uniform"), x) == pytest.approx(24 / 7, abs=2 * 4 / GRID**2 + 1e-3)


def test_fit_alphas_fits_each_layer_on_the_inputs_of_the_fitted_layers_before_it():
    torch.manual_seed(0)
    model = models.build_model("mnist_resnet10", num_classes=10, in_channels=1,
                               policy=QuantPolicy(w_bits=2, a_bits=2))
    model.eval()
    bn = model.layer2[0].bn1
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    x = torch.randn(16, 1, 28, 28)
    changed = fit_alphas(model, x, grid=8)
    assert not model.training and bn.momentum == 0.1
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    assert len(changed) == 2 * 11
    layer = model.layer3[0].conv2
    assert changed["weight/layer3.0.conv2"][1] == mse_alpha(layer.weight_quant, layer.weight, 8)
    seen = {}
    hook = layer.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    model.train()
    model(x)                      # the same pass again, every threshold now fitted
    hook.remove()
    assert layer.act_quant.act_alpha.item() == mse_alpha(layer.act_quant, seen["x"], 8)
    assert changed["act/layer3.0.conv2"] == (6.0, layer.act_quant.act_alpha.item())
