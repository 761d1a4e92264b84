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


# ---------------------------------------------------------------- the budget

BUDGETED = """
    name: b
    data: {dataset: synthetic}
    quant:
      w_bits: 4
      a_bits: 4
      budget: {avg_w_bits: 3.0}
      layers:
        "layer1.*": {w_bits: {%(d)s: [2, 4]}}
        "layer2.*": {w_bits: {%(d)s: [2, 4]}}
        "layer3.*": {w_bits: {%(d)s: [2, 4]}}
    search: {algorithm: %(alg)s, num_samples: %(n)s}
"""
# per-stage weights (layer1 13,824, layer2 51,200, layer3 204,800 of 269,824; tests/quant/test_cost.py):
# only layer3 at 2 bits brings the average to 3.0 or below, e.g. 4/4/2 -> (13,824*4 + 51,200*4 +
# 204,800*2)/269,824 = 669,696/269,824 = 2.482; 2/2/4 -> 949,248/269,824 = 3.518 (over)


def test_grid_over_budget_is_refused_with_the_offending_combinations(tmp_path):
    from sweep.cli.run import main
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(BUDGETED % {"d": "grid", "alg": "grid", "n": 1}))
    with pytest.raises(Exception) as err:
        load_experiment(path, cwd=str(tmp_path))
    text = str(err.value)
    assert err.value.key == "quant.budget" and err.value.file == str(path)
    assert "4 of 8 grid combination(s) are over the budget" in text
    assert ("quant.layers.layer1.*.w_bits=2  quant.layers.layer2.*.w_bits=2  "
            "quant.layers.layer3.*.w_bits=4  (avg_w_bits 3.518, avg_a_bits 4.000)") in text
    assert text.count("layer3.*.w_bits=4") == 4 and "layer3.*.w_bits=2" not in text
    assert main([str(path), "--dry-run"]) == 2


def test_random_draws_within_budget_count_their_rejections(tmp_path, capsys):
    from sweep.cli.run import main
    from sweep.config.budget import tree_cost
    exp = _exp(tmp_path, BUDGETED % {"d": "choice", "alg": "random", "n": 6})
    plan = plan_stage(exp, "main")
    assert len(plan.draws.trees) == plan.num_trials() == 6
    costs = [tree_cost(t)[0] for t in plan.draws.trees]
    assert all(c.avg_w_bits <= 3.0 for c in costs)
    # each draw is over the budget with chance 1/2 (layer3 at 4 bits): some are rejected
    assert plan.rejected() > 0
    again = plan_stage(exp, "main")           # seeded: the same draws, the same count
    assert again.draws.trees == plan.draws.trees and again.rejected() == plan.rejected()
    from ray.tune.search.variant_generator import generate_variants
    got = [spec["tree"] for _, spec in generate_variants(ray_space(plan))]
    assert got == plan.draws.trees
    assert main([str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"budget: {plan.rejected()} draw(s) over the budget rejected" in out
    shown = [line for line in out.splitlines() if "| avg_w_bits" in line]
    assert len(shown) == 6
    assert shown[0].endswith(f"avg_w_bits {costs[0].avg_w_bits:.3f}  avg_a_bits 4.000")


def test_optuna_reports_over_budget_points_infeasible_and_asks_again(tmp_path):
    import optuna
    from sweep.config.budget import tree_cost
    from sweep.tune.plan import optuna_space
    from sweep.tune.search import BudgetedOptunaSearch
    plan = plan_stage(_exp(tmp_path, BUDGETED % {"d": "choice", "alg": "optuna", "n": 8}), "main")
    assert plan.budgeted and plan.draws is None
    searcher = BudgetedOptunaSearch(space=optuna_space(plan), metric="val_acc", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for i in range(8):
        params = searcher.suggest(f"t{i}")
        assert tree_cost(params["tree"])[0].avg_w_bits <= 3.0
        searcher.on_trial_complete(f"t{i}", {"val_acc": 50.0 + i})
    trials = searcher._ot_study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == searcher.rejected > 0
    assert all(t.constraints["avg_w_bits"] > 0 for t in pruned)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and all(t.constraints["avg_w_bits"] <= 0 for t in done)


def test_pareto_front_keeps_what_nothing_beats():
    from sweep.metrics import pareto_front
    # (cost, accuracy): b is beaten by a (cheaper, as accurate), d by c (same cost, less
    # accurate), f has no accuracy; e is the most accurate, g the cheapest
    pts = {"a": (1.0, 80.0), "b": (2.0, 80.0), "c": (3.0, 85.0), "d": (3.0, 84.0),
           "e": (5.0, 90.0), "f": (0.5, None), "g": (0.8, 60.0)}
    front = pareto_front(pts, lambda k: pts[k][0], lambda k: pts[k][1])
    assert front == ["g", "a", "c", "e"]
    assert pareto_front([], lambda k: 0, lambda k: 0) == []


def test_shipped_bit_allocation_space():
    exp = load_experiment(REPO / "search_spaces" / "bit_allocation.yaml", cwd=str(REPO))
    assert [s.name for s in exp.stages] == ["fp32", "allocation"]
    plan = plan_stage(exp, "allocation")
    assert plan.search.algorithm == "optuna" and plan.search.scheduler.type == "asha"
    assert plan.budgeted and plan.init == {"best_of": "fp32", "match": []}
    assert plan.searched == [f"quant.layers.layer{i}.*.{k}_bits" for i in (1, 2, 3) for k in "wa"]
    assert exp.trial_spaces("allocation")[0]["quant"]["budget"] == {"avg_w_bits": 3.0, "avg_a_bits": 3.0}
    assert not plan_stage(exp, "fp32").budgeted


# ---------------------------------------------------------------- a real budgeted sweep

SWEEP = """
    name: budget_e2e
    data:
      dataset: synthetic
      synthetic: {train_size: 64, test_size: 32, image_size: 8}
    model: {arch: resnet20}
    quant:
      w_bits: 4
      a_bits: 4
      budget: {avg_w_bits: 3.0, avg_a_bits: 3.0}
      layers:
        "layer1.*": {w_bits: {choice: [2, 4]}, a_bits: {choice: [2, 4]}}
        "layer2.*": {w_bits: {choice: [2, 4]}, a_bits: {choice: [2, 4]}}
        "layer3.*": {w_bits: {choice: [2, 4]}, a_bits: {choice: [2, 4]}}
    train: {epochs: 1, batch_size: 32, lr: 0.05, device: cpu, compile: false}
    search: {algorithm: random, num_samples: 6, seed: 1, scheduler: {type: fifo}}
    resources: {cpus_per_trial: 1}
"""


@pytest.mark.slow
def test_budgeted_random_sweep_trains_only_within_budget_and_reports_it(tmp_path, capsys):
    """6 random samples of per-stage bits in {2, 4} under a 3.0-bit budget: every trained
    trial's logged averages are within it, the rejections are counted (printed, in
    sweep.json and on the stage run), and the report shows the cost beside accuracy
    with a Pareto plot."""
    from tests.support.sweeps import store, sweep, write
    path = write(tmp_path, SWEEP)
    proc = sweep(tmp_path, path, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = plan_stage(load_experiment(path, cwd=str(tmp_path)), "main").rejected()
    assert planned > 0
    assert f"quant.budget: {planned} draw(s) over the budget were rejected" in proc.stdout
    assert f"budget:     {planned} configuration(s) over quant.budget rejected" in proc.stdout
    state = json.loads((tmp_path / "sweeps" / "budget_e2e" / "sweep.json").read_text())
    assert state["stages"]["main"]["rejected_over_budget"] == planned

    uri = f"sqlite:///{tmp_path}/sweeps/mlflow.db"
    client = store(tmp_path)
    exp = client.get_experiment_by_name("budget_e2e")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    stage = next(r for r in runs if r.data.tags.get("sweep.role") == "stage")
    assert stage.data.metrics["rejected_over_budget"] == planned
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    for run in trials:
        for key in ("avg_w_bits", "avg_a_bits", "weight_size_bytes", "bops"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [0], key       # logged once, at step 0
        assert run.data.metrics["avg_w_bits"] <= 3.0 and run.data.metrics["avg_a_bits"] <= 3.0
        folder = client.download_artifacts(run.info.run_id, "bits.json", str(tmp_path / run.info.run_id))
        bits = json.loads(pathlib.Path(folder).read_text())
        assert bits["avg_w_bits"] == pytest.approx(run.data.metrics["avg_w_bits"])
        assert bits["image_size"] == [8, 8] and bits["layers"]["layer3.0.conv2"]["params"] == 36_864
        # 8x8 images: a sixteenth of the 32x32 MACs of every conv
        assert bits["layers"]["layer3.0.conv2"]["macs"] == 2_359_296 // 16

    from sweep.cli.report import main as report
    plots = tmp_path / "plots"
    assert report(["budget_e2e", "--mlflow-uri", uri, "--plots", str(plots)]) == 0
    text = capsys.readouterr().out
    assert "avg bits w / a" in text and "weight size KiB" in text and "GBOPs" in text
    assert (plots / "pareto.png").stat().st_size > 10_000
