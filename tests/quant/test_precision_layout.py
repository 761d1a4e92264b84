"""Quantizers stay exact under bf16 autocast and channels-last memory (math in float32)."""
import pytest
import torch
import torch.nn.functional as F

import models
from quant import ActQuantizer, QuantPolicy, WeightQuantizer


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
    m = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    loss = F.cross_entropy(out.float(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert m.layer2[0].conv1.act_quant.act_alpha.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_quantizers_equal_cpu_float32():
    """On the GPU under bf16 autocast: the quantizers still see and give float32, and agree
    with the CPU element for element."""
    torch.manual_seed(0)
    aq, wq = ActQuantizer(4, "apot", init_alpha=2.0), WeightQuantizer(3, "apot")
    a = (torch.rand(8, 16, 10, 10) * 3).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3)
    y_a, y_w = aq(a), wq(w)
    aq_c, wq_c = aq.to("cuda"), wq.to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g_a, g_w = aq_c(a.cuda()), wq_c(w.cuda())
    assert g_a.dtype == g_w.dtype == torch.float32
    assert torch.equal(g_a.cpu(), y_a) and torch.equal(g_w.cpu(), y_w)
    m = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x).float(), torch.arange(16, device="cuda") % 10)
    loss.backward()
    assert torch.isfinite(loss) and m.layer3[2].conv2.weight_quant.wgt_alpha.grad is not None


def test_quantized_model_traces_as_one_graph():
    """train.compile: torch.compile sees the quantizers inline (no graph breaks), so on a
    GPU the whole forward and backward fuse and replay as CUDA graphs."""
    m = models.build_model("resnet20", policy=QuantPolicy(w_bits=2, a_bits=3, scheme="apot"))
    explained = torch._dynamo.explain(m)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1
