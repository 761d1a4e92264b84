"""Every registered model builds, runs forward/backward, and checkpoints round-trip."""
import pytest
import torch
import torch.nn.functional as F

import models
from models import CheckpointError, build_from_checkpoint, load_weights, read_checkpoint, save_checkpoint
from quant import QuantConv2d, QuantPolicy, quantized_layer_names



CIFAR = [a for a in models.list_models() if models.get_entry(a).family == "cifar"]
ALPHA_KEYS = {"cifar": ("weight_quant.wgt_alpha", "act_quant.act_alpha"),
              "imagenet": ("weight_alpha", "act_alpha")}


@pytest.fixture
def eager_kernels():
    """Eager quantizer kernels (the same functions, not compiled): the wiring is under test."""
    from quant import kernels
    before = kernels.mode()
    kernels.set_mode("eager")
    yield
    kernels.set_mode(before)


@pytest.mark.parametrize("bits", [32, 4, 2])
@pytest.mark.parametrize("arch", models.list_models())
def test_registered_model_forward_backward(arch, bits, eager_kernels):
    """Every architecture at 32, 4 and 2 bits: the output's shape, a finite gradient for
    every parameter, and the clipping thresholds under its family's state-dict names."""
    in_ch, size = (1, 28) if arch.startswith("mnist_") else (3, 16 if arch in CIFAR else 32)
    m = models.build_model(arch, num_classes=7, in_channels=in_ch, policy=QuantPolicy(w_bits=bits, a_bits=bits))
    out = m(torch.randn(2, in_ch, size, size))
    assert out.shape == (2, 7)
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    family = models.get_entry(arch).family
    first = quantized_layer_names(m)[0]           # layer1.0.conv1; MobileNetV2: layer1.0.conv2
    keys = [k for k in m.state_dict() if k.startswith(first + ".")]
    if bits == 32:
        assert keys == [f"{first}.weight"]
    else:
        assert sorted(keys) == sorted([f"{first}.weight"] + [f"{first}.{k}" for k in ALPHA_KEYS[family]])
        assert m.get_submodule(first).act_quant.act_alpha.grad != 0


def test_mnist_shaped_input_one_channel():
    m = models.build_model("resnet20", in_channels=1, policy=QuantPolicy(w_bits=2, a_bits=2))
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnt20' \(did you mean resnet20\?\); available: resnet20"):
        models.build_model("resnt20")


def test_full_precision_model_keeps_8bit_first_and_last():
    m = models.build_model("resnet20")
    assert isinstance(m.conv1, QuantConv2d) and m.conv1.act_quant is None
    assert not isinstance(m.layer1[0].conv1, QuantConv2d)
    fp = models.build_model("resnet20", policy=QuantPolicy(first_last_bits=32))
    assert not isinstance(fp.conv1, QuantConv2d)


def test_project_checkpoint_round_trip(tmp_path):
    m = models.build_model("resnet20", policy=QuantPolicy(
        w_bits=2, a_bits=2, scheme="ngrid", z=4.0, layers={"layer3.*": {"w_bits": 3, "scheme": "apot"}}))
    with torch.no_grad():
        m.layer3[0].conv1.weight_quant.wgt_alpha.fill_(1.7)
    path = save_checkpoint(tmp_path / "best.pt", m,
                           model_cfg={"arch": "resnet20", "num_classes": 10, "in_channels": 3},
                           quant_cfg={"w_bits": 2, "a_bits": 2, "scheme": "ngrid", "z": 4.0,
                                      "layers": [["layer3.*", {"w_bits": 3, "scheme": "apot"}]]},
                           data_cfg={"dataset": "synthetic", "mean": [0.5] * 3, "std": [0.25] * 3})
    raw = torch.load(path, weights_only=True)
    assert raw["provenance"]["versions"]["torch"] == torch.__version__
    m2, ckpt = build_from_checkpoint(path)
    assert ckpt["data"]["mean"] == [0.5] * 3
    assert float(m2.layer3[0].conv1.weight_quant.wgt_alpha.detach()) == pytest.approx(1.7)
    m.eval(), m2.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_truncated_checkpoint_gives_one_clear_message(tmp_path):
    m = models.build_model("resnet20")
    good = save_checkpoint(tmp_path / "good.pt", m, model_cfg={"arch": "resnet20"}, quant_cfg={}, data_cfg={})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"bad.pt: is truncated or corrupt"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match=r"nothere.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nothere.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text.pt: is truncated or corrupt"):
        read_checkpoint(tmp_path / "text.pt")


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    small = models.build_model("resnet20", num_classes=10)
    path = tmp_path / "c10.pt"
    torch.save({"state_dict": small.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"does not fit model resnet20: .*shape mismatch.*fc.weight: "
                                              r"checkpoint \(10, 64\) vs model \(100, 64\)"):
        load_weights(models.build_model("resnet20", num_classes=100), read_checkpoint(path)["state_dict"], path)
    with pytest.raises(CheckpointError, match=r"72 model key\(s\) missing from it, e.g. layer1.3.conv1.weight"):
        load_weights(models.build_model("resnet32"), read_checkpoint(path)["state_dict"], path)


def test_full_precision_checkpoint_starts_quantized_model_keeping_alphas(tmp_path):
    fp = models.build_model("resnet20")
    path = tmp_path / "fp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in fp.state_dict().items()}, "best_prec": 1.0}, path)
    q = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4))
    info = load_weights(q, read_checkpoint(path)["state_dict"], path)
    assert len(info["missing_alphas"]) == 40
    assert float(q.layer2[0].conv1.act_quant.act_alpha.detach()) == 8.0
    assert torch.equal(q.layer2[0].conv1.weight, fp.layer2[0].conv1.weight)


def test_reference_checkpoints_load_with_their_alphas(apot_ckpt_dir):
    q = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4))
    ckpt = read_checkpoint(apot_ckpt_dir / "w4a4_model_best.pth.tar")
    assert load_weights(q, ckpt["state_dict"]) == {"missing_alphas": [], "ignored_alphas": []}
    assert float(q.layer1[0].conv1.act_quant.act_alpha.detach()) == float(ckpt["state_dict"]["layer1.0.conv1.act_alpha"])


def test_build_model_takes_the_policy_itself():
    policy = QuantPolicy(w_bits=3, a_bits=4, scheme="uniform", layers={"layer3.*": {"w_bits": 2}})
    m = models.build_model("resnet20", num_classes=5, in_channels=1, policy=policy)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert m.quant_policy.family == "cifar"                      # the architecture's, filled in
    assert m.quant_policy == QuantPolicy(**{**policy.to_dict(), "family": "cifar"})
    assert m.layer3[0].conv1.weight_quant.bits == 2 and m.layer1[0].conv1.weight_quant.bits == 3
    with pytest.raises(TypeError):
        models.build_model("resnet20", w_bits=4)                 # no kwargs re-packing


def test_checkpoint_quant_entry_round_trip(tmp_path):
    """The trainer stores QuantPolicy.to_dict(layer_pairs=True); checkpoints written before
    (the same keys, or fewer) load through the same QuantPolicy.from_dict."""
    from models.checkpoint import model_of, policy_of
    policy = QuantPolicy(w_bits=2, a_bits=2, scheme="apot", act_scheme="apot", first_last_bits=8,
                         layers={"layer2.*": {"w_bits": 4, "act_scheme": "uniform"}, "layer2.0.*": {"a_bits": 3}})
    m = models.build_model("resnet20", policy=policy)
    path = save_checkpoint(tmp_path / "p.pt", m, model_cfg={"arch": "resnet20", "num_classes": 10, "in_channels": 3},
                           quant_cfg=policy, data_cfg={})
    ckpt = read_checkpoint(path)
    assert ckpt["quant"] == policy.to_dict(layer_pairs=True)
    assert policy_of(ckpt) == policy
    m2, _ = build_from_checkpoint(path)
    assert m2.quant_policy == m.quant_policy
    old = {"format": "quant-sweep", "model": {"arch": "resnet20"},        # as written before QuantPolicy
           "quant": {"w_bits": 4, "a_bits": 4, "scheme": "apot", "act_scheme": "apot", "z": None,
                     "family": "cifar", "first_last_bits": 8, "layers": [["layer3.*", {"a_bits": 2}]]}}
    assert policy_of(old) == QuantPolicy(w_bits=4, a_bits=4, act_scheme="apot", family="cifar",
                                         layers={"layer3.*": {"a_bits": 2}})
    assert policy_of(old, w_bits=3).w_bits == 3
    assert model_of(old).layer3[0].conv1.act_quant.bits == 2
