"""Quantizers stay exact under bf16 autocast and channels-last memory (math in float32)."""
import torch
import torch.nn.functional as F

import models
from quant import ActQuantizer, WeightQuantizer


def test_channels_last_input_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    aq = ActQuantizer(4, "apot", init_alpha=2.0)
    a = torch.rand(4, 8, 6, 6) * 3
    a_cl = a.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    a = a.requires_grad_()
    g = torch.randn(4, 8, 6, 6)
    y, y_cl = aq(a), aq(a_cl)
    assert torch.equal(y, y_cl)
    (y * g).sum().backward()
    alpha_grad = aq.act_alpha.grad.clone()
    aq.act_alpha.grad = None
    (y_cl * g).sum().backward()
    assert torch.equal(a.grad, a_cl.grad)
    torch.testing.assert_close(aq.act_alpha.grad, alpha_grad, rtol=1e-5, atol=0)


def test_bf16_inputs_are_quantized_in_float32():
    aq = ActQuantizer(3, "uniform", init_alpha=4.0)
    a = (torch.rand(2, 4, 5, 5) * 5).to(torch.bfloat16)
    y = aq(a)
    assert y.dtype == torch.float32
    assert torch.equal(y, aq(a.float()))
    wq = WeightQuantizer(4, "apot")
    w = torch.randn(8, 4, 3, 3).to(torch.bfloat16)
    assert torch.equal(wq(w), wq(w.float()))


def test_bf16_autocast_channels_last_training_step_runs():
    m = models.build_model("resnet20", w_bits=4, a_bits=4).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    loss = F.cross_entropy(out.float(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert m.layer2[0].conv1.act_quant.act_alpha.grad is not None
