"""Level sets, configuration errors at construction, and the per-layer policy."""
import numpy as np
import pytest
import torch

from quant import (ActQuantizer, QuantConfigError, QuantConv2d, QuantPolicy, WeightQuantizer,
                   act_levels, alphas, clamp_alphas_, weight_levels)
from quant.levels import thresholds


@pytest.mark.parametrize("bits,n", [(3, 4), (4, 8), (5, 16)])
def test_apot_weight_level_counts(bits, n):
    ls = weight_levels(bits, "apot")
    assert len(ls) == n and ls.levels[0] == 0 and ls.levels[-1] == 1
    assert np.all(np.diff(ls.levels) > 0)


def test_two_bit_apot_and_pot_weights_are_ternary():
    for scheme in ("apot", "pot", "uniform"):
        assert weight_levels(2, scheme).levels.tolist() == [0.0, 1.0]


def test_ngrid_replaces_zero_with_two_to_minus_z():
    assert weight_levels(2, "ngrid", 2.0).levels.tolist() == [0.25, 1.0]
    assert weight_levels(2, "ngrid", 0.5).levels[0] == np.float32(2 ** -0.5)


def test_binary_weights_for_bit_allocation():
    wq = WeightQuantizer(1, "apot")
    w = torch.randn(8, 4, 3, 3)
    out = wq(w)
    assert set(out.abs().unique().tolist()) == {3.0}


def test_thresholds_agree_with_reference_rule_everywhere():
    """Every float32 in [0, 1] at and around each threshold projects like argmin |x - v|."""
    levels = act_levels(4, "apot").levels
    t = thresholds(levels)
    for i, ti in enumerate(t):
        for x in (np.nextafter(ti, np.float32(0)), ti):
            ref = np.argmin(np.abs(np.float32(x) - levels))
            ours = int(np.sum(t <= x))
            assert ours == ref or abs(np.float32(x) - levels[ours]) == abs(np.float32(x) - levels[ref])


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=6, scheme="apot"), r"w_bits=6 is not supported; weights take 2, 3, 4, 5"),
    (dict(bits=3, scheme="ngrid", z=2.0), r"'ngrid' is a 2-bit weight grid; got w_bits=3"),
    (dict(bits=2, scheme="ngrid", z=0.0), r"z=0.0 is not allowed; ngrid's Z must be a real number > 0"),
    (dict(bits=2, scheme="ngrid", z=-1), r"z=-1 is not allowed"),
    (dict(bits=2, scheme="ngrid"), r"'ngrid' needs quant.z"),
    (dict(bits=4, scheme="apot", z=2.5), r"z=2.5 belongs to scheme 'ngrid' only"),
    (dict(bits=4, scheme="log2"), r"unknown scheme 'log2'; expected one of: apot, pot, uniform, ngrid"),
])
def test_weight_quantizer_errors(kwargs, match):
    with pytest.raises(QuantConfigError, match=match):
        WeightQuantizer(**kwargs)


@pytest.mark.parametrize("bits,scheme,match", [
    (1, "apot", r"a_bits=1 is not supported; activations take 2, 3, 4, 5"),
    (8, "uniform", r"a_bits=8 is not supported"),
    (4, "ngrid", r"act_scheme 'ngrid' does not exist"),
])
def test_act_quantizer_errors(bits, scheme, match):
    with pytest.raises(QuantConfigError, match=match):
        ActQuantizer(bits, scheme)


def test_policy_globs_last_match_wins():
    policy = QuantPolicy(w_bits=4, a_bits=4, layers=(("layer2.*", {"w_bits": 2}),
                                                     ("layer2.0.conv1", {"a_bits": 3, "scheme": "uniform"})))
    assert policy.spec_for("layer1.0.conv1").w_bits == 4
    s = policy.spec_for("layer2.0.conv1")
    assert (s.w_bits, s.a_bits, s.scheme, s.act_scheme) == (2, 3, "uniform", "uniform")
    assert policy.spec_for("layer2.1.conv2").w_bits == 2


def test_policy_ngrid_defaults_activations_to_apot():
    s = QuantPolicy(w_bits=2, a_bits=2, scheme="ngrid", z=4).spec_for("layer1.0.conv1")
    assert (s.scheme, s.act_scheme, s.z) == ("ngrid", "apot", 4)


def test_policy_rejects_bad_layer_override():
    """Checked when the policy is built (not when a layer is first looked up), naming the key."""
    with pytest.raises(QuantConfigError, match=r"^w_bits=7 is not supported; weights take 2, 3, 4, 5") as e:
        QuantPolicy(w_bits=4, a_bits=4, layers={"layer3.*": {"w_bits": 7}})
    assert e.value.key == "layers.layer3.*.w_bits"
    with pytest.raises(QuantConfigError, match=r"unknown key\(s\) bits") as e:
        QuantPolicy(w_bits=4, a_bits=4, layers={"layer1.*": {"bits": 2}})
    assert e.value.key == "layers.layer1.*.bits"
    with pytest.raises(QuantConfigError, match=r"a_bits=7 is not supported") as e:
        QuantPolicy(w_bits=4, a_bits=4, layers={"layer1.*": {"a_bits": 7}})
    assert e.value.key == "layers.layer1.*.a_bits"
    with pytest.raises(QuantConfigError, match=r"act_scheme 'ngrid' does not exist") as e:
        QuantPolicy(w_bits=4, a_bits=4, layers={"layer1.*": {"act_scheme": "ngrid"}})
    assert e.value.key == "layers.layer1.*.act_scheme"


def test_policy_pattern_matching_nothing_is_an_error():
    import models
    with pytest.raises(QuantConfigError, match=r"'layer9.\*' matches no quantizable layer"):
        models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4,
                                                          layers={"layer9.*": {"w_bits": 2}}))


def test_alpha_floor_and_names():
    import models
    m = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4))
    with torch.no_grad():
        m.layer1[0].conv1.weight_quant.wgt_alpha.fill_(-0.5)
    clamp_alphas_(m, 1e-3)
    a = alphas(m)
    assert a["weight/layer1.0.conv1"] == pytest.approx(1e-3)
    assert a["act/layer2.0.downsample.0"] == 8.0
    assert len(a) == 2 * 20  # 18 block convs + 2 shortcut convs, a weight and an act alpha each
    assert sum(isinstance(x, QuantConv2d) for x in m.modules()) == 20 + 1  # + the 8-bit first conv


def test_loaded_negative_alpha_is_used_as_absolute_value():
    wq = WeightQuantizer(4, "apot")
    with pytest.warns(RuntimeWarning, match=r"wgt_alpha=-2.5 is negative; using its absolute value"):
        wq.load_state_dict({"wgt_alpha": torch.tensor(-2.5)})
    assert float(wq.wgt_alpha.detach()) == 2.5


@pytest.mark.parametrize("kwargs,match,key", [
    (dict(w_bits=1), r"w_bits=1 \(binary weights\) is for per-layer bit allocation only", "w_bits"),
    (dict(family="mnist"), r"unknown family 'mnist'; expected one of: cifar, imagenet", "family"),
    (dict(alpha_grad_scale=0.0), r"alpha_grad_scale=0.0: expected a positive number", "alpha_grad_scale"),
    (dict(alpha_grad_scale="x"), r"alpha_grad_scale='x': expected a positive number", "alpha_grad_scale"),
    (dict(w_bits=4, z=2.0), r"z=2 belongs to scheme 'ngrid' only \(quant.scheme is 'apot'\)", "z"),
    (dict(w_bits=2, scheme="ngrid"), r"'ngrid' needs quant.z", "z"),
    (dict(first_last_bits=1), r"first_last_bits=1 is not supported; .* 2 to 8 bits, or 32", "first_last_bits"),
    (dict(act_scheme="ngrid"), r"act_scheme 'ngrid' does not exist", "act_scheme"),
])
def test_policy_checks_itself_naming_the_key(kwargs, match, key):
    with pytest.raises(QuantConfigError, match=match) as e:
        QuantPolicy(**kwargs)
    assert e.value.key == key


def test_binary_weights_allowed_per_layer_only():
    policy = QuantPolicy(w_bits=4, a_bits=4, layers={"layer2.*": {"w_bits": 1}})
    assert policy.spec_for("layer2.0.conv1").w_bits == 1 and policy.spec_for("layer1.0.conv1").w_bits == 4


def test_policy_dict_round_trip_in_both_layer_shapes():
    import pickle
    policy = QuantPolicy(w_bits=2, a_bits=3, scheme="ngrid", z=4.0, first_last_bits=6,
                         layers={"layer3.*": {"w_bits": 3, "scheme": "apot", "act_scheme": "uniform"},
                                 "layer1.0.conv1": {"a_bits": 2}})
    assert QuantPolicy.from_dict(policy.to_dict()) == policy
    pairs = policy.to_dict(layer_pairs=True)
    assert pairs["layers"] == [["layer3.*", {"w_bits": 3, "scheme": "apot", "act_scheme": "uniform"}],
                               ["layer1.0.conv1", {"a_bits": 2}]]
    assert QuantPolicy.from_dict(pairs) == policy
    assert QuantPolicy.from_dict({}) == QuantPolicy() and QuantPolicy.from_dict(None) == QuantPolicy()
    with pytest.raises(QuantConfigError, match=r"unknown quant key\(s\) budgets") as e:
        QuantPolicy.from_dict({"w_bits": 4, "budgets": {"avg_w_bits": 2.5}})
    assert e.value.key == "budgets"
    budgeted = QuantPolicy.from_dict({"w_bits": 4, "budget": {"avg_w_bits": 3, "avg_a_bits": None}})
    assert budgeted.budget == {"avg_w_bits": 3.0}
    assert QuantPolicy.from_dict(budgeted.to_dict()) == budgeted
    err = pickle.loads(pickle.dumps(QuantConfigError("bad", "layers.x.w_bits")))
    assert (str(err), err.key) == ("bad", "layers.x.w_bits")
