"""Bit allocation as a search: per-layer bits as distributions inside ``quant.layers``
(grid, Ray's random variants, Optuna), average-bit budgets and their rejections."""
from __future__ import annotations

import json
import pathlib
import textwrap

import pytest

from sweep.config import load_experiment, resolve_trial
from sweep.tune.plan import _define_by_run, plan_stage, ray_space

REPO = pathlib.Path(__file__).resolve().parents[3]

PER_LAYER = """
    name: pl
    data: {dataset: synthetic}
    quant:
      w_bits: 4
      a_bits: 4
      layers:
        "layer1.*": {w_bits: {%(d)s: [2, 4]}}
        "layer3.*": {w_bits: 1, a_bits: {%(d)s: [2, 3]}}
        "*.downsample.0": {w_bits: 3}
    search: {algorithm: %(alg)s}
"""


def _exp(tmp_path, text, *sets, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_experiment(path, list(sets), cwd=str(tmp_path))


def _layers(tree):
    return resolve_trial(tree).quant.layers


def test_per_layer_grid_expands_into_concrete_layer_overrides(tmp_path):
    plan = plan_stage(_exp(tmp_path, PER_LAYER % {"d": "grid", "alg": "grid"}), "main")
    assert plan.num_trials() == 4
    assert plan.searched == ["quant.layers.layer1.*.w_bits", "quant.layers.layer3.*.a_bits"]
    got = [_layers(t) for t in plan.expand_grid()]
    assert got[1] == (("layer1.*", {"w_bits": 2}), ("layer3.*", {"w_bits": 1, "a_bits": 3}),
                      ("*.downsample.0", {"w_bits": 3}))
    assert {(g[0][1]["w_bits"], g[1][1]["a_bits"]) for g in got} == {(2, 2), (2, 3), (4, 2), (4, 3)}


def test_per_layer_choice_through_ray_and_optuna(tmp_path):
    import optuna
    from ray.tune.search.variant_generator import generate_variants
    exp = _exp(tmp_path, PER_LAYER % {"d": "choice", "alg": "random"}, "search.num_samples=1")
    seen = set()
    for seed in range(8):
        for _, spec in generate_variants(ray_space(plan_stage(exp, "main")), random_state=seed):
            layers = _layers(spec["tree"])
            seen.add((layers[0][1]["w_bits"], layers[1][1]["a_bits"]))
    assert seen <= {(2, 2), (2, 3), (4, 2), (4, 3)} and len(seen) > 1
    plan = plan_stage(_exp(tmp_path, PER_LAYER % {"d": "choice", "alg": "optuna"}, name="o.yaml"), "main")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        layers = _layers(_define_by_run(trial, plan.arm_trees)["tree"])
        seen.add((layers[0][1]["w_bits"], layers[1][1]["a_bits"]))
        assert set(trial.params) == {"quant.layers.layer1.*.w_bits", "quant.layers.layer3.*.a_bits"}
        study.tell(trial, 1.0)
    assert seen == {(2, 2), (2, 3), (4, 2), (4, 3)}
