"""Every golden case of ../shared/golden/quantizer_vectors.npz, in both kernel modes.

On the CPU always, and on a CUDA device where there is one. Comparison rule
(../shared/README.md): outputs equal element for element except at most
1 in 10,000 one level away (ties); input gradients exactly equal; alpha gradients to a
relative 1e-4.
"""
import numpy as np
import pytest
import torch

from quant import act_levels, kernels, weight_levels
from quant.functional import act_quantize, normalised_weight_quantize, weight_quantize


def _golden(shared_dir):
    path = shared_dir / "golden" / "quantizer_vectors.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return np.load(path)


def _cases():
    cases = [("weight", s, f"w{b}") for s in ("apot", "uniform") for b in (2, 3, 4, 5)]
    cases += [("weight", "pot", f"w{b}") for b in (3, 4, 5)]
    cases += [("weight", "ngrid", f"w2_z{z}") for z in ("0.5", "1", "2", "4", "10", "20")]
    cases += [("act", s, f"a{b}") for s in ("apot", "pot", "uniform") for b in (2, 3, 4, 5)]
    return cases


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Where the quantizers run: the CPU always, a CUDA device when there is one."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(request.param)


@pytest.fixture(params=["compiled", "eager"])
def kernel_mode(request):
    before = kernels.mode()
    kernels.set_mode(request.param)
    yield request.param
    kernels.set_mode(before)


def _assert_outputs(y, ref, levels, alpha):
    y = y.detach().cpu().numpy()
    diff = y != ref
    n_diff = int(diff.sum())
    assert n_diff <= max(1, ref.size // 10000), f"{n_diff} of {ref.size} outputs differ"
    if n_diff:  # a tie: the neighbouring level, nothing else
        step = np.abs(np.diff(np.sort(levels))).max() * abs(alpha)
        assert np.all(np.abs(y[diff] - ref[diff]) <= step * 1.0001)


@pytest.mark.parametrize("kind,scheme,tag", _cases(), ids=lambda v: str(v))
def test_golden_case(shared_dir, device, kernel_mode, kind, scheme, tag):
    g = _golden(shared_dir)
    key = f"{kind}/{scheme}/{tag}"
    field = lambda name: g[f"{key}/{name}"]
    on = lambda a: torch.from_numpy(a).to(device)
    alpha = torch.tensor(float(field("alpha")), device=device, requires_grad=True)
    if kind == "weight":
        bits = int(tag[1])
        z = float(tag.split("_z")[1]) if scheme == "ngrid" else None
        ls = weight_levels(bits, scheme, z)
        x = torch.tensor(field("w_norm"), device=device, requires_grad=True)
        y = normalised_weight_quantize(x, alpha, on(ls.thresholds), on(ls.levels))
        grad_name = "grad_w_norm"
    else:
        ls = act_levels(int(tag[1:]), scheme)
        x = torch.tensor(field("x"), device=device, requires_grad=True)
        y = act_quantize(x, alpha, on(ls.thresholds), on(ls.levels))
        grad_name = "grad_x"
    np.testing.assert_array_equal(np.sort(field("levels").astype(np.float32)), ls.levels)
    _assert_outputs(y, field("y"), ls.levels, float(field("alpha")))
    y.backward(on(field("grad_out")))
    np.testing.assert_array_equal(x.grad.cpu().numpy(), field(grad_name))
    np.testing.assert_allclose(float(alpha.grad), float(field("grad_alpha")), rtol=1e-4)


@pytest.mark.parametrize("scheme,tag", [("apot", "w4"), ("uniform", "w3"), ("ngrid", "w2_z2")])
def test_weight_normalisation_matches_reference(shared_dir, device, kernel_mode, scheme, tag):
    """From the raw weight: mean/std normalisation (constants) then the quantizer."""
    g = _golden(shared_dir)
    key = f"weight/{scheme}/{tag}"
    bits = int(tag[1])
    z = float(tag.split("_z")[1]) if scheme == "ngrid" else None
    ls = weight_levels(bits, scheme, z)
    on = lambda a: torch.from_numpy(a).to(device)
    w = torch.tensor(g[f"{key}/w_raw"], device=device, requires_grad=True)
    alpha = torch.tensor(float(g[f"{key}/alpha"]), device=device, requires_grad=True)
    y = weight_quantize(w, alpha, on(ls.thresholds), on(ls.levels))
    _assert_outputs(y, g[f"{key}/y"], ls.levels, float(g[f"{key}/alpha"]))
    y.backward(on(g[f"{key}/grad_out"]))
    # d/dw = g / std (the reference differentiates through the division by a constant std)
    expected = torch.from_numpy(g[f"{key}/grad_w_norm"]) / w.detach().cpu().std()
    np.testing.assert_allclose(w.grad.cpu().numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(float(alpha.grad), float(g[f"{key}/grad_alpha"]), rtol=1e-4)
