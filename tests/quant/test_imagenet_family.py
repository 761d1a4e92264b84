"""The ImageNet family: hand-computed gradients, and one layer against the reference conv."""
import pytest
import torch
from torch import nn

from quant import QuantConv2d
from quant import functional as QF
from quant.quantizers import ActQuantizer, WeightQuantizer
from tests.reference_apot_imagenet import RefImageNetQuantConv2d


def _table(q):
    return q.thr, q.lv


def test_calibrated_2bit_backward_by_hand():
    """2-bit weights: q = round(clamp(x, -1, 1)), x = w_hat / alpha; the weight gradient is
    passed unclipped; d alpha = sum g * (sign(x) if |x| > 1 else q - x), times grad_scale."""
    w_hat = torch.tensor([-2.4, -0.9, -0.5, 0.3, 0.75, 1.8], requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    thr, lv = _table(WeightQuantizer(2, "apot", family="imagenet"))
    zero = torch.zeros(())
    y = QF.WeightQuantize.apply(w_hat, alpha, thr, lv, zero, zero + 1, "cifar", 0.5)
    # x = -1.6, -0.6, -0.333, 0.2, 0.5 (ties round to even: 0), 1.2
    assert y.tolist() == [-1.5, -1.5, 0.0, 0.0, 0.0, 1.5]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y.backward(g)
    assert w_hat.grad.tolist() == g.tolist()                      # not clipped at |x| > 1
    by_hand = 1 * -1 + 2 * (-1 + 0.6) + 3 * (0 + 1 / 3) + 4 * (0 - 0.2) + 5 * (0 - 0.5) + 6 * 1   # = 1.9
    assert float(alpha.grad) == pytest.approx(0.5 * by_hand, rel=1e-6)


def test_clipped_3bit_backward_by_hand():
    """3-5-bit weights: zero weight gradient outside +-alpha, the same alpha gradient."""
    w_hat = torch.tensor([-2.4, 0.3, 1.8], requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    thr, lv = _table(WeightQuantizer(3, "apot", family="imagenet"))
    zero = torch.zeros(())
    y = QF.WeightQuantize.apply(w_hat, alpha, thr, lv, zero, zero + 1, "clipped", None)
    assert y.tolist() == pytest.approx([-1.5, 0.25 * 1.5, 1.5])  # x = 0.2 -> level 0.25
    y.backward(torch.tensor([1.0, 2.0, 3.0]))
    assert w_hat.grad.tolist() == [0.0, 2.0, 0.0]
    assert float(alpha.grad) == pytest.approx(-1 + 2 * (0.25 - 0.2) + 3, rel=1e-5)


def test_activation_clamp_to_0_1_by_hand():
    """Below 0 the ImageNet family passes no gradient (input nor alpha); CIFAR does."""
    a = torch.tensor([-0.5, 0.0, 1.2, 3.0, 7.0])       # alpha 6: x = -0.083, 0, 0.2, 0.5, 1.17
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    grads = {}
    for family in ("imagenet", "cifar"):
        q = ActQuantizer(2, "apot", init_alpha=6.0, family=family)
        x = a.clone().requires_grad_(True)
        y = q(x)
        assert y.tolist() == pytest.approx([0.0, 0.0, 1.5, 3.0, 6.0])
        y.backward(g)
        grads[family] = (x.grad.tolist(), float(q.act_alpha.grad))
    assert grads["imagenet"][0] == [0.0, 2.0, 3.0, 4.0, 0.0]
    assert grads["imagenet"][1] == pytest.approx(3 * (0.25 - 0.2) + 5, rel=1e-5)
    assert grads["cifar"][0] == [1.0, 2.0, 3.0, 4.0, 0.0]
    assert grads["cifar"][1] == pytest.approx(1 * 0.5 / 6 + 3 * (0.25 - 0.2) + 5, rel=1e-5)


def test_initial_alphas_and_state_dict_names():
    conv = nn.Conv2d(4, 4, 3, bias=False)
    layer = QuantConv2d.from_float(conv, weight_quantizer=WeightQuantizer(4, family="imagenet"),
                                   act_quantizer=ActQuantizer(4, family="imagenet"))
    sd = layer.state_dict()
    assert sorted(sd) == ["act_alpha", "weight", "weight_alpha"]
    assert float(sd["act_alpha"]) == 6.0 and float(sd["weight_alpha"]) == 3.0
    sd["act_alpha"], sd["weight_alpha"] = torch.tensor(4.5), torch.tensor(2.25)
    layer.load_state_dict(sd)
    assert float(layer.act_quant.act_alpha.detach()) == 4.5
    assert float(layer.weight_quant.wgt_alpha.detach()) == 2.25


@pytest.mark.parametrize("grad_scale", [None, 0.5])
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_layer_equals_the_reference_conv(bits, grad_scale):
    """One ImageNet-family conv against the reference's QuantConv2d: the same forward values,
    the same weight and input gradients (autograd through the normalisation), alpha
    gradients equal up to the float32 order of the sum."""
    torch.manual_seed(bits)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    ref = RefImageNetQuantConv2d(conv, bits, grad_scale)
    ours = QuantConv2d.from_float(
        conv, weight_quantizer=WeightQuantizer(bits, "apot", family="imagenet", grad_scale=grad_scale),
        act_quantizer=ActQuantizer(bits, "apot", family="imagenet", grad_scale=grad_scale))
    with torch.no_grad():                  # alphas where some weights and inputs are clipped
        for m in (ref, ours):
            m.load_state_dict({**m.state_dict(), "weight_alpha": torch.tensor(1.7), "act_alpha": torch.tensor(2.5)})
    x = torch.randn(4, 8, 10, 10) * 1.5        # negative inputs too: the [0, 1] clamp
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y = ref(x1), ours(x2)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-7)
    for mine, theirs in ((ours.weight_quant.wgt_alpha, ref.weight_alpha), (ours.act_quant.act_alpha, ref.act_alpha)):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5)
