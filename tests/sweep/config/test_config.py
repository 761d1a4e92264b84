"""sweep.config (schema, keys, distributions): loading, precedence, distributions, and every config error
asserted by its message and key path."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from sweep.config import (ConfigError, InitFrom, TrialConfig, expand_variants, flatten,
                          get_dotted, load_experiment, resolve_trial, set_dotted)
from tests.support.files import float_checkpoint, tiny_npz
from sweep.config.space import (Choice, Grid, LogUniform, QUniform, RandInt, Uniform,
                         has_distributions, parse_distribution)

REALISTIC = """
name: ngrid_z_resnet56_cifar100
data:
  dataset: cifar100
  root: ./data
  val_fraction: 0.1
model:
  arch: resnet56
quant:
  w_bits: 2
  a_bits: 2
  scheme: apot
  layers:
    "layer3.*": {a_bits: 3}
    "*.downsample.0": {w_bits: 4, scheme: uniform}
train:
  epochs: 200
  batch_size: 128
  lr: 0.04
  weight_decay: 1e-4
  seed: 0
search:
  algorithm: grid
  num_samples: 1
  scheduler: {type: asha, grace_period: 10, reduction_factor: 3}
  variants:
    - {quant.scheme: apot}
    - {quant.scheme: ngrid, quant.z: {grid: [1, 2, 4, 10, 20]}}
resources:
  cpus_per_trial: 2
  gpus_per_trial: 0.25
"""

STAGED = """
name: progressive
model: {arch: resnet20}
train: {epochs: 5, lr: 0.04}
stages:
  - name: fp32
    set: {quant.w_bits: 32, quant.a_bits: 32, train.lr: 0.1, train.weight_decay: 5.0e-4}
  - name: w4a4
    set: {quant.w_bits: 4, quant.a_bits: 4, train.init: {best_of: fp32}}
  - name: w2a2
    set: {quant.w_bits: 2, quant.a_bits: 2, train.weight_decay: 3.0e-5, train.init: {best_of: w4a4}}
"""


def write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, text, overrides=()):
    return load_experiment(write(tmp_path, text), list(overrides), cwd=str(tmp_path))


def minimal(**sections):
    """A small valid file with some sections replaced (YAML flow mappings)."""
    lines = ["name: t"] + [f"{k}: {v}" for k, v in sections.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- loading

def test_realistic_file(tmp_path):
    exp = load(tmp_path, REALISTIC)
    assert exp.name == "ngrid_z_resnet56_cifar100"
    assert exp.file == str(tmp_path / "x.yaml")
    assert [s.name for s in exp.stages] == ["main"]
    assert exp.search.scheduler.type == "asha" and exp.search.scheduler.grace_period == 10
    assert exp.resources.gpus_per_trial == 0.25 and exp.tracking.mlflow_uri is None
    arms = exp.trial_spaces("main")
    assert len(arms) == 2
    assert arms[0]["quant"]["scheme"] == "apot" and arms[0]["quant"]["z"] is None
    assert arms[1]["quant"]["z"] == Grid((1.0, 2.0, 4.0, 10.0, 20.0))
    assert exp.has_distributions(arms[1]) and not exp.has_distributions(arms[0])
    cfg = resolve_trial(arms[0])
    assert cfg.train.weight_decay == 1e-4 and cfg.data.root == str(tmp_path / "data")
    assert cfg.quant.act_scheme == "apot"
    assert [glob for glob, _ in cfg.quant.layers] == ["layer3.*", "*.downsample.0"]
    spec = cfg.quant.spec_for("layer3.0.downsample.0")
    assert (spec.w_bits, spec.a_bits, spec.scheme) == (4, 3, "uniform")


def test_trial_roundtrip_and_flatten(tmp_path):
    exp = load(tmp_path, REALISTIC)
    tree = exp.trial_spaces("main")[1]
    set_dotted(tree, "quant.z", 4)                       # what Ray substitutes
    cfg = resolve_trial(tree)
    assert isinstance(cfg, TrialConfig) and cfg.quant.z == 4.0
    plain = json.loads(json.dumps(cfg.to_dict()))
    assert resolve_trial(plain) == cfg
    flat = cfg.flatten()
    assert flat["quant.layers.layer3._.a_bits"] == 3
    assert flat["quant.layers._.downsample.0.scheme"] == "uniform"
    assert flat["train.lr"] == 0.04 and flat["quant.z"] == 4.0
    assert not any("*" in k or "[" in k for k in flat)
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_resolve_trial_defaults_and_extra_sections():
    cfg = resolve_trial({"quant": {"w_bits": 4, "a_bits": 4}, "search": {"whatever": 1}})
    assert cfg.train.epochs == 200 and cfg.train.milestones == (150, 225)
    assert cfg.model.arch == "resnet20" and cfg.data.synthetic.train_size == 2048
    with pytest.raises(ConfigError, match="distribution") as err:
        resolve_trial({"quant": {"z": Grid((1.0,)), "scheme": "ngrid", "w_bits": 2}})
    assert err.value.key == "quant.z"


def test_precedence(tmp_path):
    text = """
    name: prec
    train: {lr: 0.2, epochs: 7, batch_size: 64}
    stages:
      - name: a
        set: {train.lr: 0.3, train.epochs: 9}
    """
    exp = load(tmp_path, text, ["train.epochs=11"])
    tree = exp.stage_tree("a")
    assert get_dotted(tree, "train.momentum") == 0.9          # default
    assert get_dotted(tree, "train.batch_size") == 64         # file
    assert get_dotted(tree, "train.lr") == 0.3                # stage set over file
    assert get_dotted(tree, "train.epochs") == 11             # --set over stage set
    assert exp.base["train"]["lr"] == 0.2                     # base is the file's (+ --set)


def test_set_wins_over_arm_and_stage_over_file_arm(tmp_path):
    text = REALISTIC.replace("- {quant.scheme: apot}", "- {quant.scheme: apot, train.lr: 0.5}")
    exp = load(tmp_path, text, ["train.lr=0.01"])
    assert [t["train"]["lr"] for t in exp.trial_spaces("main")] == [0.01, 0.01]


def test_stages(tmp_path):
    exp = load(tmp_path, STAGED)
    assert [s.name for s in exp.stages] == ["fp32", "w4a4", "w2a2"]
    cfg = resolve_trial(exp.trial_spaces("w2a2")[0])
    assert cfg.train.init == InitFrom("w4a4") and cfg.train.weight_decay == 3e-5
    assert exp.stage("fp32").overrides["train.weight_decay"] == 5e-4


def test_number_like_strings(tmp_path):
    exp = load(tmp_path, minimal(train="{weight_decay: 1e-4, lr: 5.0e-4, alpha_weight_decay: 3e-5}"))
    train = exp.base["train"]
    assert (train["weight_decay"], train["lr"], train["alpha_weight_decay"]) == (1e-4, 5e-4, 3e-5)
    assert isinstance(train["weight_decay"], float)


def test_relative_paths_made_absolute(tmp_path):
    float_checkpoint(tmp_path / "ckpt.pt")
    tiny_npz(tmp_path / "d.npz", num_classes=10, n_train=10)
    exp = load(tmp_path, minimal(data="{dataset: npz, path: d.npz, root: ../data}",
                                 train="{init: ckpt.pt}"))
    assert exp.base["data"]["path"] == str(tmp_path / "d.npz")
    assert exp.base["data"]["root"] == os.path.normpath(str(tmp_path / "../data"))
    assert exp.base["train"]["init"] == str(tmp_path / "ckpt.pt")
    exp = load(tmp_path, minimal(), ["train.init=runs:/abc123", "data.root=/abs/data"])
    assert exp.base["train"]["init"] == "runs:/abc123" and exp.base["data"]["root"] == "/abs/data"


def test_npz_that_exists(tmp_path, cifar_npz):
    exp = load(tmp_path, minimal(data=f"{{dataset: npz, path: {cifar_npz}}}"))
    assert exp.base["data"]["path"] == str(cifar_npz)


def test_every_distribution(tmp_path):
    text = minimal(
        quant="{w_bits: {grid: [2, 3, 4]}, a_bits: {choice: [2, 4]}, z: null}",
        train="{lr: {loguniform: [1e-3, 0.1]}, momentum: {uniform: [0.8, 0.95]}, "
              "epochs: {randint: [2, 4]}, weight_decay: {quniform: [0, 1e-3, 1e-4]}}")
    exp = load(tmp_path, text, ["train.seed={choice: [0, 1]}"])
    q, t = exp.base["quant"], exp.base["train"]
    assert q["w_bits"] == Grid((2, 3, 4)) and q["a_bits"] == Choice((2, 4))
    assert t["lr"] == LogUniform(1e-3, 0.1) and t["momentum"] == Uniform(0.8, 0.95)
    assert t["epochs"] == RandInt(2, 4) and t["epochs"].candidates() == [2, 3, 4]
    assert t["weight_decay"] == QUniform(0.0, 1e-3, 1e-4) and t["seed"] == Choice((0, 1))
    for dist in (q["w_bits"], t["lr"], t["epochs"]):
        assert pickle.loads(pickle.dumps(dist)) == dist
    assert has_distributions(exp.base) and parse_distribution({"layers": 1}) is None


def test_expand_variants():
    tree = {"quant": {"scheme": "apot", "w_bits": 2}}
    assert expand_variants(tree, None) == [tree]
    arms = expand_variants(tree, [{"quant.scheme": "pot"}, {"quant.w_bits": 3}])
    assert arms == [{"quant": {"scheme": "pot", "w_bits": 2}}, {"quant": {"scheme": "apot", "w_bits": 3}}]
    assert flatten({"a": {"b": 1, "c": [1]}}) == {"a.b": 1, "a.c": [1]}


# ---------------------------------------------------------------- errors

ERRORS = [
    # (file sections or override, match, key)
    ({"train": "{lerning_rate: 0.1}"}, r"unknown key; did you mean train\.lr\?", "train.lerning_rate"),
    ({"trian": "{lr: 0.1}"}, r"did you mean train\?", "trian"),
    ({"quant": "{w_bits: four}"}, "expected an integer, got 'four'", "quant.w_bits"),
    ({"train": "{nesterov: 1}"}, "expected true or false", "train.nesterov"),
    ({"train": "{epochs: true}"}, "expected an integer, got True", "train.epochs"),
    ({"quant": "{w_bits: 6}"}, r"w_bits=6 is not supported; weights take 2, 3, 4, 5 bits", "quant.w_bits"),
    ({"quant": "{w_bits: {grid: [2, 3, 6]}}"}, "w_bits=6 is not supported", "quant.w_bits"),
    ({"quant": "{w_bits: 3, scheme: ngrid, z: 2}"}, "'ngrid' is a 2-bit weight grid; got w_bits=3", "quant.w_bits"),
    ({"quant": "{w_bits: 2, scheme: ngrid, z: 0}"}, "Z must be a real number > 0", "quant.z"),
    ({"quant": "{w_bits: 2, scheme: ngrid, z: {grid: [1, -2]}}"}, "z=-2", "quant.z"),
    ({"quant": "{w_bits: 2, scheme: ngrid}"}, "needs quant.z", "quant.z"),
    ({"quant": "{w_bits: 2, scheme: apot, z: 2}"}, "belongs to scheme 'ngrid' only", "quant.z"),
    ({"quant": "{w_bits: 2, scheme: apot, layers: {'layer2.*': {w_bits: 3, scheme: ngrid}}, z: 1}"},
     "2-bit weight grid; got w_bits=3", "quant.layers.layer2.*.w_bits"),
    ({"quant": "{layers: {'layer2.*': {bits: 3}}}"}, r"unknown key; did you mean w_bits\?", "quant.layers.layer2.*.bits"),
    ({"quant": "{layers: {'layer 2': {w_bits: 3}}}"}, "is not a layer glob", "quant.layers.layer 2"),
    ({"quant": "{layers: {'layer2.*': 3}}"}, "non-empty mapping with w_bits", "quant.layers.layer2.*"),
    ({"quant": "{layers: {'layer2.*': {a_bits: 7}}}"}, "a_bits=7 is not supported", "quant.layers.layer2.*.a_bits"),
    ({"quant": "{act_scheme: ngrid}"}, "weight-only grid", "quant.act_scheme"),
    ({"quant": "{first_last_bits: 1}"}, "2 to 8 bits, or 32", "quant.first_last_bits"),
    ({"quant": "{w_bits: 1}"}, r"w_bits=1 \(binary weights\) is for per-layer bit allocation only: "
     r"set it on layers in quant.layers$", "quant.w_bits"),
    ({"quant": "{w_bits: {grid: [1, 2]}}"}, "per-layer bit allocation only", "quant.w_bits"),
    ({"quant": "{family: resnet}"}, r"unknown family 'resnet'; expected one of: cifar, imagenet", "quant.family"),
    ({"quant": "{family: {choice: [cifar, mnist]}}"}, "unknown family 'mnist'", "quant.family"),
    ({"quant": "{alpha_grad_scale: -1}"}, "expected a positive number", "quant.alpha_grad_scale"),
    ({"quant": "{budget: 2.5}"}, r"quant.budget: expected a mapping with avg_w_bits and/or avg_a_bits", "quant.budget"),
    ({"quant": "{budget: {avg_bits: 2}}"}, r"unknown budget key 'avg_bits'", "quant.budget.avg_bits"),
    ({"quant": "{budget: {avg_w_bits: 0.5}}"}, r"average number of bits from 1 to 32, got 0.5", "quant.budget.avg_w_bits"),
    ({"quant": "{budget: {avg_a_bits: two}}"}, r"expected a number, got 'two'", "quant.budget.avg_a_bits"),
    ({"quant": "{w_bits: 4, a_bits: 4, budget: {avg_w_bits: 3.5}}"},
     r"this configuration averages 4.000 weight bits and 4.000 activation bits, over the budget", "quant.budget"),
    ({"quant": "{layers: {'layer2.*': {act_scheme: ngrid}}}"}, "act_scheme 'ngrid' does not exist",
     "quant.layers.layer2.*.act_scheme"),
    ({"quant": "{layers: {'layer2.*': {act_scheme: log2}}}"}, "unknown act_scheme 'log2'",
     "quant.layers.layer2.*.act_scheme"),
    ({"quant": "{w_bits: 4, layers: {'layer2.*': {w_bits: 1, scheme: ngrid}}, z: 2}"},
     "'ngrid' is a 2-bit weight grid; got w_bits=1", "quant.layers.layer2.*.w_bits"),
    ({"data": "{synthetic: {seed: -1}}"}, "must be >= 0", "data.synthetic.seed"),
    ({"search": "{algorithm: optuna}", "train": "{lr: {grid: [0.1, 0.2]}}"},
     r"grid cannot be used with search.algorithm: optuna.*\{choice: \[\.\.\.\]\}", "train.lr"),
    ({"search": "{variants: []}"}, "empty list has no arms", "search.variants"),
    ({"search": "{variants: [{quant.scheme: pot}, {}]}"}, "non-empty mapping", "search.variants[1]"),
    ({"search": "{variants: [{quant.scheme: ngrid, quant.w_bits: 2, quant.z: {grid: [1, -2]}}]}"},
     "z=-2", "search.variants[0].quant.z"),
    ({"search": "{variants: [{search.seed: 1}]}"}, "cannot be set here", "search.variants[0].search.seed"),
    ({"train": "{lr: {grid: []}}"}, "grid takes a non-empty list", "train.lr"),
    ({"quant": "{layers: {choice: [{'layer1.*': {w_bits: {grid: [3, 4]}}}]}}"},
     "must be plain values, not distributions", "quant.layers"),
    ({"search": "{num_samples: {grid: [1, 2]}}"}, "only allowed in data", "search.num_samples"),
    ({"train": "{epochs: {uniform: [1, 10]}}"}, r"uniform samples real numbers.*randint", "train.epochs"),
    ({"train": "{epochs: {randint: [10, 2]}}"}, "randint takes .* got lo=10 > hi=2", "train.epochs"),
    ({"train": "{lr: {loguniform: [0, 0.1]}}"}, "loguniform takes .*0 < lo", "train.lr"),
    ({"train": "{lr: {uniform: [0, 0.1]}}"}, "must be > 0, got 0.0", "train.lr"),
    ({"data": "{dataset: cifar}"}, "unknown dataset 'cifar'; did you mean cifar10", "data.dataset"),
    ({"data": "{dataset: npz}"}, "data.dataset: npz needs data.path", "data.path"),
    ({"data": "{name: 'CIFAR 10'}"}, "data.name may use letters, digits", "data.name"),
    ({"data": "{dataset: npz, path: missing.npz}"}, "missing.npz does not exist", "data.path"),
    ({"data": "{val_fraction: 1.0}"}, r"must be in \[0, 1\), got 1.0", "data.val_fraction"),
    ({"model": "{arch: resnt20}"}, "unknown model 'resnt20'; did you mean resnet20", "model.arch"),
    ({"train": "{init: missing.pt}"}, "missing.pt does not exist", "train.init"),
    ({"train": "{init: {best_of: fp32}}"}, "not a stage of this file", "train.init"),
    ({"train": "{device: gpu}"}, "expected auto, cpu, cuda or cuda:N", "train.device"),
    ({"train": "{compile: yes please}"}, "expected true, false or auto", "train.compile"),
    ({"search": "{scheduler: {type: asha, reduction_factor: 1}}"}, "must be > 1", "search.scheduler.reduction_factor"),
    ({"search": "{scheduler: {type: fifo, grace_period: 3}}"}, "only type: asha", "search.scheduler.grace_period"),
]


@pytest.mark.parametrize("sections,match,key", ERRORS, ids=[e[2] for e in ERRORS])
def test_file_errors(tmp_path, sections, match, key):
    with pytest.raises(ConfigError, match=match) as err:
        load(tmp_path, minimal(**sections))
    assert err.value.key == key
    assert err.value.file == str(tmp_path / "x.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'x.yaml'}: {key}: ")


def test_error_message_reads_file_key_message(tmp_path):
    (tmp_path / "search_spaces").mkdir()
    write(tmp_path, minimal(quant="{w_bits: 6}"), "search_spaces/x.yaml")
    with pytest.raises(ConfigError) as err:
        load_experiment("search_spaces/x.yaml", cwd=str(tmp_path))
    assert str(err.value).startswith("search_spaces/x.yaml: quant.w_bits: w_bits=6 is not supported; "
                                     "weights take 2, 3, 4, 5 bits")
    assert pickle.loads(pickle.dumps(err.value)).key == "quant.w_bits"


@pytest.mark.parametrize("stages,match,key", [
    ("[{name: a, set: {train.init: {best_of: b}}}, {name: b}]",
     "'b' is not a stage before 'a'", "stages[0].set.train.init"),
    ("[{name: a}, {name: b, set: {train.init: {best_of: c}}}]",
     "'c' is not a stage of this file; stages before 'b': a", "stages[1].set.train.init"),
    ("[{name: a}, {name: a}]", "already used by stages\\[0\\]", "stages[1].name"),
    ("[{name: a, set: {quant.z: 2}}]", "belongs to scheme 'ngrid' only", "stages[0].set.quant.z"),
    ("[{name: a, set: {quant: {w_bits: 6}}}]", "w_bits=6", "stages[0].set.quant.w_bits"),
    ("[{name: 'a b'}]", "letters, digits", "stages[0].name"),
    ("[{name: a, sets: {}}]", "did you mean set", "stages[0].sets"),
    ("[{name: a, set: {tracking.mlflow_uri: x}}]", "cannot be set here", "stages[0].set.tracking.mlflow_uri"),
    ("[]", "non-empty list", "stages"),
])
def test_stage_errors(tmp_path, stages, match, key):
    with pytest.raises(ConfigError, match=match) as err:
        load(tmp_path, minimal(stages=stages))
    assert err.value.key == key


@pytest.mark.parametrize("override,match,key", [
    ("train.lr0.01", "expected key=value", "train.lr0.01"),
    ("=3", "expected key=value", "=3"),
    ("train.lr=abc", "expected a number, got 'abc'", "train.lr"),
    ("quant.z={grid: [1, -2]}", "z=-2", "quant.z"),
    ("quant.w_bits=3", "2-bit weight grid", "quant.w_bits"),
    ("train.lerning_rate=0.1", r"did you mean train\.lr\?", "train.lerning_rate"),
    ("stages=[]", "cannot be set from the command line", "stages"),
    ("name=a/b", "letters, digits", "name"),
])
def test_override_errors(tmp_path, override, match, key):
    with pytest.raises(ConfigError, match=match) as err:
        load(tmp_path, minimal(quant="{w_bits: 2, scheme: ngrid, z: 1}"), [override])
    assert err.value.key == key and err.value.file == "--set"


def test_overrides_parse_yaml(tmp_path):
    exp = load(tmp_path, minimal(quant="{w_bits: 2, scheme: ngrid, z: 1}"),
               ["train.lr=0.01", "quant.z={grid: [1,2]}", "name=other", "quant={a_bits: 4}"])
    assert exp.name == "other" and exp.base["train"]["lr"] == 0.01
    assert exp.base["quant"]["z"] == Grid((1.0, 2.0)) and exp.base["quant"]["a_bits"] == 4
    assert exp.overrides["train.lr"] == 0.01


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="name: is required") as err:
        load(tmp_path, "train: {lr: 0.1}\n")
    assert err.value.key == "name"
    with pytest.raises(ConfigError, match="'lr' is written twice"):
        load(tmp_path, "name: t\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override,match,key", [
    ("quant.budget=3", "expected a mapping with avg_w_bits and/or avg_a_bits", "quant.budget"),
    ("quant.w_bits=1", "per-layer bit allocation only", "quant.w_bits"),
])
def test_refused_knobs_from_the_command_line(tmp_path, override, match, key):
    with pytest.raises(ConfigError, match=match) as err:
        load(tmp_path, minimal(), [override])
    assert err.value.key == key and err.value.file in ("--set", str(tmp_path / "x.yaml"))


def test_refusals_exit_2_like_every_config_error(tmp_path):
    from sweep.cli import train
    for text in ("quant: {budget: 2.5, w_bits: 2}", "quant: {w_bits: 4, budget: {avg_w_bits: 3}}",
                 "quant: {family: resnet}", "quant: {w_bits: 1}"):
        assert train.main([str(write(tmp_path, minimal() + text + "\n"))]) == 2


def test_per_layer_keys_are_those_of_the_policy(tmp_path):
    """w_bits, a_bits, scheme and act_scheme per layer, in YAML as in QuantPolicy; w_bits 1 is
    allowed per layer (bit allocation); flatten names them like every quant.layers key."""
    exp = load(tmp_path, minimal(quant="{w_bits: 4, a_bits: 4, scheme: apot, layers: {'layer2.*': "
                                       "{act_scheme: uniform, a_bits: 3}, 'layer3.0.conv1': {w_bits: 1}}}"))
    cfg = resolve_trial(exp.trial_spaces("main")[0])
    assert cfg.quant.layers == (("layer2.*", {"act_scheme": "uniform", "a_bits": 3}),
                                ("layer3.0.conv1", {"w_bits": 1}))
    spec = cfg.quant.spec_for("layer2.1.conv2")
    assert (spec.w_bits, spec.a_bits, spec.scheme, spec.act_scheme) == (4, 3, "apot", "uniform")
    assert cfg.quant.spec_for("layer3.0.conv1").w_bits == 1
    flat = cfg.flatten()
    assert flat["quant.layers.layer2._.act_scheme"] == "uniform" and flat["quant.layers.layer3.0.conv1.w_bits"] == 1
    assert resolve_trial(json.loads(json.dumps(cfg.to_dict()))) == cfg
    from quant.policy import LAYER_KEYS
    assert LAYER_KEYS == ("w_bits", "a_bits", "scheme", "act_scheme")


def test_trial_quant_section_is_the_policy():
    from quant import QuantPolicy
    cfg = resolve_trial({"quant": {"w_bits": 2, "a_bits": 2, "scheme": "ngrid", "z": 2}})
    assert isinstance(cfg.quant, QuantPolicy)
    assert cfg.quant == QuantPolicy(w_bits=2, a_bits=2, scheme="ngrid", act_scheme="apot", z=2.0)
    assert cfg.quant.to_dict() == {"w_bits": 2, "a_bits": 2, "scheme": "ngrid", "act_scheme": "apot",
                                   "family": None, "z": 2.0, "first_last_bits": 8, "alpha_grad_scale": None,
                                   "layers": {}, "budget": None, "granularity": None,
                                   "allocation": {"method": "none", "ratio_start": 0.01, "ratio_end": 0.3,
                                                  "schedule_epochs": 150, "margin": 0.07}}


def test_the_key_table_is_derived_from_the_schema():
    import dataclasses
    from quant import QuantPolicy
    from sweep.config.keys import KEYS, SUBSECTIONS
    from quant.policy import Allocation
    from sweep.config.schema import DataConfig, SyntheticConfig, TrainConfig
    assert {k[len("quant."):] for k in KEYS if k.startswith("quant.")} == {
        f.name for f in dataclasses.fields(QuantPolicy) if f.name != "allocation"} | {
        f"allocation.{f.name}" for f in dataclasses.fields(Allocation)}
    assert "quant.allocation" in SUBSECTIONS
    assert {k for k in KEYS if k.startswith("train.")} == {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    assert {k for k in KEYS if k.startswith("data.synthetic.")} == {
        f"data.synthetic.{f.name}" for f in dataclasses.fields(SyntheticConfig)}
    assert "data.synthetic" in SUBSECTIONS and len(dataclasses.fields(DataConfig)) == 13
    defaults = resolve_trial({}).quant
    assert dataclasses.replace(defaults, act_scheme=None) == QuantPolicy()   # one set of defaults
    assert resolve_trial({}).data.synthetic.seed == 0                        # the data's own default


def test_one_key_sanitiser_for_config_and_mlflow():
    from sweep.config import sanitize_key
    from sweep.track import recorder
    assert recorder.sanitize_key is sanitize_key
    assert sanitize_key("quant.layers.layer[12].*.w_bits") == "quant.layers.layer_12_._.w_bits"
    flat = flatten({"quant": {"layers": {"layer[12].*": {"w_bits": 3}}}})
    assert flat == {"quant.layers.layer_12_._.w_bits": 3}


def test_training_side_imports_without_ray_mlflow_or_pydantic():
    code = ("import sys, quant, models, sweep.train.engine, sweep.train.bits, sweep.cli.evaluate; "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    assert out.stdout.strip() == "[]"


def test_imports_without_ray_or_mlflow():
    code = ("import sys, sweep.config; "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    assert out.stdout.strip() == "[]"


def test_resolve_trial_with_cwd(tmp_path):
    cfg = resolve_trial({"data": {"dataset": "npz", "path": "d.npz"}}, cwd=str(tmp_path))
    assert cfg.data.path == str(tmp_path / "d.npz") and cfg.data.root == str(tmp_path / "data")


def test_layer_glob_matching_no_layer_is_refused_at_load(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nmodel: {arch: resnet20}\n"
                    "quant: {w_bits: 4, a_bits: 4, layers: {'layer4.*': {w_bits: 2}}}\n")
    with pytest.raises(ConfigError, match=r"quant.layers.layer4.\*: matches no quantizable layer of "
                                          r"resnet20; its layers are named like layer1.0.conv1") as e:
        load_experiment(path)
    assert e.value.key == "quant.layers.layer4.*"


def test_family_and_alpha_grad_scale_from_yaml_set_and_distributions(tmp_path):
    """quant.family (cifar | imagenet) and quant.alpha_grad_scale are keys like any other:
    in the file, searched by a distribution, overridden by --set, flattened for MLflow."""
    exp = load(tmp_path, minimal(model="{arch: mnist_resnet10}",
                                 quant="{w_bits: 2, a_bits: 2, family: {choice: [cifar, imagenet]}, "
                                       "alpha_grad_scale: 0.5}"),
               ["quant.alpha_grad_scale=0.25"])
    arm = exp.trial_spaces("main")[0]
    assert exp.has_distributions(arm)
    assert arm["quant"]["family"] == Choice(("cifar", "imagenet"))
    for family in ("cifar", "imagenet"):
        cfg = resolve_trial({**arm, "quant": {**arm["quant"], "family": family}})
        assert cfg.quant.family == family and cfg.quant.alpha_grad_scale == 0.25
        flat = cfg.flatten()
        assert flat["quant.family"] == family and flat["quant.alpha_grad_scale"] == 0.25
