"""The sweep runner without a cluster: plans (arms, trial counts, Ray's and Optuna's view
of the space), --dry-run of every shipped file, config errors before Ray or MLflow,
choosing the init checkpoint, bits labels, the progress table, --restart."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from sweep.config import InitFrom, load_experiment, resolve_trial
from sweep.tune.plan import _define_by_run, plan_stage, ray_space
from sweep.tune.progress import ProgressTable, clock, fmt, stage_line
from sweep.tune.lineage import pick_init

REPO = pathlib.Path(__file__).resolve().parents[3]
PUBLISHED = REPO / "search_spaces" / "published"     # --compare-to tables, not search spaces
SPACES = sorted(p for p in (REPO / "search_spaces").rglob("*.yaml") if PUBLISHED not in p.parents)


def test_search_spaces_are_shipped():
    names = {p.name for p in SPACES}
    assert {"smoke.yaml", "ngrid_z.yaml", "apot_vs_uniform.yaml", "progressive_resnet20.yaml",
            "lr_wd_optuna.yaml", "apot_imagenet_resnet.yaml", "apot_mnist.yaml",
            "apot_cifar_resnet56.yaml", "bit_allocation.yaml", "dambq_resnet20.yaml"} <= names


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An image folder for the spaces that name one (ImageNet's is not here)."""
    from tests.support.files import image_folder
    return image_folder(tmp_path_factory.mktemp("imagenet"), n_train=1, n_val=1)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: str(p.relative_to(REPO / "search_spaces")))
def test_every_search_space_passes_dry_run(path, tmp_path, monkeypatch, capsys, images):
    """Every shipped space, in subfolders too, validates and ends with its cost estimate;
    an image folder the file names is given by --set data.path."""
    import yaml
    from sweep.cli.run import main
    monkeypatch.chdir(tmp_path)
    folder = (yaml.safe_load(path.read_text()).get("data") or {}).get("dataset") == "imagefolder"
    assert main([str(path), "--dry-run", *(["--set", f"data.path={images}"] if folder else [])]) == 0
    out = capsys.readouterr().out
    assert "nothing was started" in out and "resources per trial" in out
    assert re.search(r"\ncost estimate: [\d.,]+ GPU-hours, one NVIDIA H100 80GB per trial", out)
    assert list(tmp_path.iterdir()) == []            # no sweeps folder, no mlflow.db


def test_ngrid_z_arms_count_their_own_grids(tmp_path):
    exp = load_experiment(REPO / "search_spaces" / "ngrid_z.yaml", cwd=str(tmp_path))
    assert [s.name for s in exp.stages] == ["fp32", "w2a2"]
    fp32, w2a2 = plan_stage(exp, "fp32"), plan_stage(exp, "w2a2")
    assert fp32.num_trials() == 1 and w2a2.num_trials() == 6        # 1 apot + 5 ngrid
    trees = w2a2.expand_grid()
    assert [(t["quant"]["scheme"], t["quant"]["z"]) for t in trees] == [
        ("apot", None), ("ngrid", 1.0), ("ngrid", 2.0), ("ngrid", 4.0), ("ngrid", 10.0), ("ngrid", 20.0)]
    assert w2a2.searched == ["quant.scheme", "quant.z"]
    assert w2a2.init == {"best_of": "fp32", "match": []}
    cfg = resolve_trial(trees[3])
    assert (cfg.quant.w_bits, cfg.quant.a_bits, cfg.train.lr, cfg.train.weight_decay) == (2, 2, 0.04, 1e-4)
    cfg = resolve_trial(fp32.expand_grid()[0])
    assert (cfg.quant.w_bits, cfg.train.lr, cfg.train.weight_decay) == (32, 0.1, 5e-4)


def test_ray_expands_each_arm_with_its_own_grid(tmp_path):
    """The nested grid_search the Tuner gets yields exactly the trees of the plan."""
    from ray.tune.search.variant_generator import generate_variants
    exp = load_experiment(REPO / "search_spaces" / "apot_vs_uniform.yaml", cwd=str(tmp_path))
    plan = plan_stage(exp, "quantized")
    got = [spec["tree"] for _, spec in generate_variants(ray_space(plan))]
    want = plan.expand_grid()
    assert len(got) == plan.num_trials() == 8
    key = lambda t: json.dumps(t, sort_keys=True, default=str)    # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))


def test_optuna_define_by_run_picks_an_arm_and_its_space(tmp_path):
    import optuna
    path = tmp_path / "o.yaml"
    path.write_text(textwrap.dedent("""
        name: o
        data: {dataset: synthetic}
        train: {lr: {loguniform: [0.01, 0.2]}}
        search:
          algorithm: optuna
          num_samples: 3
          variants:
            - {quant.w_bits: 4, quant.a_bits: 4}
            - {quant.w_bits: 2, quant.a_bits: 2, quant.scheme: ngrid, quant.z: {choice: [1, 2]}}
    """))
    plan = plan_stage(load_experiment(path, cwd=str(tmp_path)), "main")
    assert plan.num_trials() == 6
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        cfg = resolve_trial(_define_by_run(trial, plan.arm_trees)["tree"])
        assert 0.01 <= cfg.train.lr <= 0.2
        assert (cfg.quant.z in (1, 2)) == (cfg.quant.scheme == "ngrid")
        seen.add(cfg.quant.w_bits)
        study.tell(trial, 1.0)
    assert seen == {2, 4}


def _candidate(stage, trial_id, metric, arch="resnet20", scheme="apot", dataset="synthetic"):
    tree = {"data": {"dataset": dataset}, "model": {"arch": arch}, "quant": {"scheme": scheme}}
    return {"stage": stage, "trial_id": trial_id, "run_id": f"run-{trial_id}", "metric": metric,
            "checkpoint": f"/x/{trial_id}/model.pt", "config": resolve_trial(tree).to_dict(), "bits": "FP32"}


def test_pick_init_matches_model_data_and_match_keys():
    cands = [_candidate("fp32", "a", 50.0), _candidate("fp32", "b", 70.0),
             _candidate("fp32", "c", 90.0, arch="resnet32"), _candidate("other", "d", 99.0),
             _candidate("fp32", "e", 95.0, dataset="cifar10"),
             _candidate("fp32", "f", 60.0, scheme="uniform")]
    cfg = resolve_trial({"data": {"dataset": "synthetic"}, "model": {"arch": "resnet20"},
                         "quant": {"w_bits": 4, "a_bits": 4, "scheme": "apot"}})
    assert pick_init(cfg, InitFrom("fp32"), cands, "max")["trial_id"] == "b"
    assert pick_init(cfg, InitFrom("fp32"), cands, "min")["trial_id"] == "a"
    assert pick_init(cfg, InitFrom("fp32", ("quant.scheme",)), cands[:2] + cands[5:], "max")["trial_id"] == "b"
    uni = resolve_trial({"data": {"dataset": "synthetic"}, "quant": {"scheme": "uniform", "w_bits": 4, "a_bits": 4}})
    assert pick_init(uni, InitFrom("fp32", ("quant.scheme",)), cands, "max")["trial_id"] == "f"
    assert pick_init(cfg, InitFrom("nothing"), cands, "max") is None


def test_imagenet_chains_start_each_architecture_from_its_own(tmp_path, images):
    """apot_imagenet_resnet.yaml: every quantized trial starts from the previous stage's
    trial of its own architecture; the uniform ResNet-18 from the APoT 5-bit one at 4 bits,
    from its own scheme at 3 bits."""
    exp = load_experiment(REPO / "search_spaces" / "apot_imagenet_resnet.yaml",
                          [f"data.path={images}"], cwd=str(tmp_path))
    plans = {s.name: plan_stage(exp, s.name) for s in exp.stages}

    def candidates(stage):
        return [{"stage": stage, "trial_id": f"{stage}-{i}", "run_id": None, "metric": 50.0 + i,
                 "checkpoint": f"/x/{stage}-{i}/model.pt", "config": resolve_trial(t).to_dict(),
                 "bits": "W4A4"} for i, t in enumerate(plans[stage].expand_grid())]

    for stage, source in (("w5a5", "fp32"), ("w4a4", "w5a5"), ("w3a3", "w4a4"), ("w2a2", "w3a3")):
        for tree in plans[stage].expand_grid():
            cfg = resolve_trial(tree)
            pick = pick_init(cfg, cfg.train.init, candidates(source), "max")
            assert pick["config"]["model"]["arch"] == cfg.model.arch, (stage, cfg.model.arch)
            if stage in ("w3a3", "w2a2"):
                assert pick["config"]["quant"]["scheme"] == cfg.quant.scheme
            elif stage == "w4a4" and cfg.quant.scheme == "uniform":
                assert pick["trial_id"] == "w5a5-0"          # the APoT ResNet-18 at 5 bits
    assert [resolve_trial(t).model.arch for t in plans["w4a4"].expand_grid()] == [
        "resnet18", "resnet34", "resnet50", "resnet18"]


def test_bits_labels():
    from models.registry import build_model
    from quant import QuantPolicy
    from sweep.train.bits import bits_label, layer_bits
    assert bits_label(build_model("resnet20")) == "FP32"
    assert bits_label(build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4))) == "W4A4"
    mixed = build_model("resnet20", policy=QuantPolicy(w_bits=2, a_bits=2, layers={"layer3.*": {"a_bits": 4}}))
    # activation bits weighted by input elements per 32x32 image (quant.budget's rule):
    # layer1: 6 convs x 16*32*32 = 98304; layer2: conv1 and shortcut 16*32*32 each, 5 convs
    # x 32*16*16 = 73728; layer3 (4 bits): conv1 and shortcut 32*16*16 each, 5 x 64*8*8 =
    # 36864; (2 * (98304 + 73728) + 4 * 36864) / 208896 = 2.353 (the plain mean over the
    # 20 convs, 7 of them at 4 bits, would be 2.70)
    assert bits_label(mixed) == "MIXED(w2.00,a2.35)"
    bits = layer_bits(mixed)
    assert bits["layer3.0.conv1"]["a_bits"] == 4 and bits["layer1.0.conv1"]["a_bits"] == 2
    assert bits["conv1"]["w_bits"] == 8 and bits["fc"]["w_bits"] == 8


def test_one_label_family_for_tags_tables_and_plots():
    from quant.levels import FULL_PRECISION
    from sweep import labels
    assert labels.FULL_PRECISION == FULL_PRECISION          # the torch-free copy agrees
    assert labels.bits_label(32, 32) == "FP32"
    assert labels.bits_label(4, 4) == labels.bits_label(4.0, 4.0) == "W4A4"
    assert labels.bits_label(2, 32) == "W2A32"
    assert labels.bits_label(2.5, 3, mixed=True) == "MIXED(w2.50,a3.00)"
    assert labels.bits_label(None, None, mixed=True) == "MIXED"


def test_best_by_mode():
    from sweep.metrics import best_of, is_better
    assert is_better(2, 1, "max") and not is_better(1, 2, "max") and is_better(1, 2, "min")
    assert not is_better(1, 1, "max") and not is_better(1, 1, "min")      # ties keep the old
    assert is_better(0.5, None, "min") and is_better(0.5, float("nan"), "max")
    assert not is_better(float("nan"), 1, "max") and not is_better(None, 1, "min")
    items = [("a", 3), ("b", 5), ("c", 5), ("d", 1), ("e", None)]
    assert best_of(items, lambda x: x[1], "max") == ("b", 5)            # the first of equals
    assert best_of(items, lambda x: x[1], "min") == ("d", 1)
    assert best_of([], lambda x: x, "max") is None
    with pytest.raises(ValueError, match="write max or min"):
        is_better(1, 2, "maximum")


LINEAGE = """
name: lin
data: {dataset: synthetic}
stages:
  - name: fp32
  - name: w4
    set: {quant.w_bits: 4, quant.a_bits: 4, train.init: {best_of: fp32}}
"""


def test_train_init_from_an_earlier_stage(tmp_path):
    from sweep.config import ConfigError
    from sweep.tune import lineage
    from sweep.tune.state import SweepState
    (tmp_path / "x.yaml").write_text(LINEAGE)
    exp = load_experiment(tmp_path / "x.yaml", cwd=str(tmp_path))
    plans = [plan_stage(exp, s.name) for s in exp.stages]
    lineage.check_sources(plans, resuming=False)
    with pytest.raises(ConfigError, match="which --stages leaves out"):
        lineage.check_sources(plans[1:], resuming=False)
    lineage.check_sources(plans[1:], resuming=True)
    assert "best trial of stage 'fp32'" in "\n".join(plans[1].describe())
    assert lineage.match_keys(plans[1].init) == ["model", "data"]

    state = SweepState(str(tmp_path / "sweep.json"))
    assert "has not finished" in lineage.blocked(plans[1], state)
    assert lineage.blocked(plans[0], state) is None
    config = resolve_trial(exp.trial_spaces("fp32")[0]).to_dict()
    entry = state.stage("fp32")
    for tid, metric in (("a", 50.0), ("b", 70.0), ("c", 60.0)):
        entry["trials"][tid] = {"trial_id": tid, "run_id": f"run-{tid}", "status": "FINISHED",
                                "metric": metric, "checkpoint": f"/x/{tid}/model.pt",
                                "config": config, "bits": "FP32"}
    entry.update(status="finished", best=entry["trials"]["b"])
    assert lineage.blocked(plans[1], state) is None
    cands = lineage.init_candidates(plans[1], state)
    assert [c["trial_id"] for c in cands] == ["b"]                  # the best of the group
    assert set(cands[0]["config"]) == {"model", "data"}             # cut to the match keys
    cfg = resolve_trial(exp.trial_spaces("w4")[0])
    path, tags, problem = lineage.init_source(cfg, {"mode": "max", "init_candidates": cands})
    assert problem is None and path == "/x/b/model.pt"
    assert tags == {"lineage.init_run_id": "run-b", "lineage.init_checkpoint": "runs:/run-b/checkpoint/model.pt",
                    "lineage.init_bits": "FP32", "lineage.init_stage": "fp32",
                    "lineage.init_trial": "b"}
    entry["trials"]["b"]["config"] = {**config, "model": {**config["model"], "arch": "resnet32"}}
    entry["best"] = entry["trials"]["b"]
    assert sorted(c["trial_id"] for c in lineage.init_candidates(plans[1], state)) == ["b", "c"]


def test_progress_table_rows(capsys):
    table = ProgressTable("val_acc", "max", ["train.lr"])
    table.row("abc_00000", {"train.lr": 0.05}, "RUNNING")
    table.row("abc_00000", {"train.lr": 0.05}, "RUNNING", 1, 42.1875)
    table.row("abc_00000", {"train.lr": 0.05}, "RUNNING", 2, 40.0)
    table.row("abc_00000", {"train.lr": 0.05}, "STOPPED", 2, 40.0, "(ASHA)")
    table.row("abc_00001", {"train.lr": 0.1}, "RUNNING", 1, 30.0, epochs=3)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["elapsed", "trial", "train.lr", "status", "epoch", "val_acc", "best"]
    assert lines[3].split()[1:] == ["abc_00000", "0.05", "RUNNING", "2", "40", "42.19"]
    assert lines[1].split()[0] == "0:00"
    assert lines[5].split()[1:] == ["abc_00001", "0.1", "RUNNING", "1/3", "30", "30"]
    assert lines[4].endswith("(ASHA)")
    assert fmt(float("nan")) == "nan" and fmt(1e-5) == "1e-05" and fmt(None) == "-"


def test_stage_line_counts_trials_and_times_the_epochs_left():
    # 12 epochs left at 47.5 s each, two trials at a time: 285 s
    assert stage_line("w4a4", 1, 2, 1, 12, 47.5, 2) == (
        "stage w4a4: 1 done, 2 running, 1 pending; ETA 4:45 (12 epoch(s) left at "
        "47.5 s/epoch, 2 at a time)")
    asha = stage_line("w4a4", 0, 1, 3, 40, 100.0, 1, early_stop=True)
    assert "ETA ≤ 1:06:40" in asha and "ASHA may stop trials sooner" in asha
    # 40 s into the current epochs: (570 - 40) / 2 = 265 s
    assert "ETA 4:25 (12 epoch(s)" in stage_line("w4a4", 1, 2, 1, 12, 47.5, 2, into_s=40)
    assert "ETA 0:00 (1 epoch(s)" in stage_line("w4a4", 1, 1, 0, 1, 47.5, 1, into_s=60)
    assert stage_line("fp32", 0, 2, 0, 4, None, 2).endswith("; ETA once an epoch is measured")
    assert stage_line("fp32", 3, 0, 0, 0, 10.0, 2) == "stage fp32: 3 done, 0 running, 0 pending"
    assert (clock(59.6), clock(3725)) == ("1:00", "1:02:05")


def test_progress_table_says_when_a_stage_line_is_due(capsys):
    table = ProgressTable("val_acc", "max", [])
    assert not table.due(60, 300)               # it has just been made
    assert table.due(0, 300) and table.due(0, 300)
    table.printed -= 61                          # a minute without a line
    assert table.due(60, 300) and not table.due(60, 300)
    table.status("stage s: 0 done, 1 running, 0 pending")
    table.status_at -= 301                       # lines, but no stage line for 5 minutes
    table.line("an epoch")
    assert table.due(60, 300) and not table.due(60, 300)
    out = capsys.readouterr().out.splitlines()
    assert [l.split(None, 1) for l in out] == [["0:00", "stage s: 0 done, 1 running, 0 pending"],
                                               ["0:00", "an epoch"]]


# Malformed files and overrides: exit 2 with one message naming the key, before Ray or
# MLflow is imported, leaving nothing behind. All cases run in one Python process.
BAD = [
    ("unknown key", "train: {lrr: 0.1}", [], "train.lrr: unknown key; did you mean train.lr?"),
    ("wrong type", "train: {epochs: many}", [], "train.epochs: expected an integer"),
    ("unsupported bits", "quant: {w_bits: 7, a_bits: 4}", [], "quant.w_bits"),
    ("ngrid at 3 bits", "quant: {w_bits: 3, a_bits: 3, scheme: ngrid, z: 2}", [], "quant.w_bits"),
    ("z <= 0", "quant: {w_bits: 2, a_bits: 2, scheme: ngrid, z: 0}", [], "quant.z"),
    ("grid with optuna", "search: {algorithm: optuna}\ntrain: {lr: {grid: [0.1, 0.2]}}", [],
     "train.lr: grid cannot be used with search.algorithm: optuna"),
    ("empty variants", "search: {variants: []}", [], "search.variants: an empty list has no arms"),
    ("unknown dataset", "data: {dataset: imagenet21k}", [], "data.dataset: unknown dataset"),
    ("missing npz", "data: {dataset: npz, path: nope.npz}", [], "data.path: npz file"),
    ("unknown stage", "stages:\n  - {name: a}\n  - {name: b, set: {train.init: {best_of: nope}}}", [],
     "stages[1].set.train.init"),
    ("malformed --set", "", ["--set", "train.lr"], "--set: train.lr: expected key=value"),
    ("unknown --set key", "", ["--set", "train.learning_rate=0.1"], "train.learning_rate: unknown key"),
    ("bad --set value", "", ["--set", "quant.a_bits=9"], "--set: quant.a_bits"),
    ("unknown --stages", "", ["--stages", "nope"], "--stages: nope: no such stage"),
    ("not YAML", "train: [unclosed", [], "not valid YAML"),
]

_RUN_BAD = r"""
import contextlib, io, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from sweep.cli.run import main
out = []
for case in json.loads(sys.argv[2]):
    os.chdir(case["dir"])
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(["x.yaml", *case["args"]])
        except SystemExit as exc:
            rc = exc.code
    out.append({"rc": rc, "err": err.getvalue(), "s": time.perf_counter() - t0,
                "left": sorted(os.listdir("."))})
print(json.dumps({"cases": out, "ray": "ray" in sys.modules, "mlflow": "mlflow" in sys.modules}))
"""


def test_bad_files_and_overrides_exit_2_before_ray_or_mlflow(tmp_path):
    cases = []
    for i, (_, body, args, _) in enumerate(BAD):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "x.yaml").write_text("name: bad\ndata: {dataset: synthetic}\n" + body + "\n"
                                  if "dataset:" not in body else "name: bad\n" + body + "\n")
        cases.append({"dir": str(d), "args": args})
    proc = subprocess.run([sys.executable, "-c", _RUN_BAD, str(REPO), json.dumps(cases)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["ray"] and not report["mlflow"]
    for (what, _, _, want), got in zip(BAD, report["cases"]):
        assert got["rc"] == 2, (what, got)
        assert want in got["err"], (what, got["err"])
        assert got["err"].startswith(("x.yaml: ", "--set: ", "--stages: ")), (what, got["err"])
        assert "Traceback" not in got["err"], (what, got["err"])        # one message
        assert got["left"] == ["x.yaml"], (what, got["left"])            # no sweeps/, mlflow.db
        assert got["s"] < 10, (what, got["s"])


def test_restart_discards_folder_and_mlflow_runs(tmp_path):
    from mlflow import MlflowClient
    from sweep.cli import run as runner
    from sweep.track import recorder, store
    (tmp_path / "x.yaml").write_text("name: again\ndata: {dataset: synthetic}\n")
    exp = load_experiment(tmp_path / "x.yaml", cwd=str(tmp_path))
    args = runner.build_parser().parse_args(["x.yaml", "--restart"])
    paths = runner.Paths(exp, args, str(tmp_path))
    store.prepare_store(paths.mlflow)
    with recorder.SweepRecorder(paths.mlflow, "again", os.path.join(paths.state, "tracking.json")) as rec:
        rec.trial_run("t0", "main", {"train.lr": 0.1})
        rec.finish_trial("t0")
    assert paths.has_results()
    from sweep.lock import SweepLock
    with SweepLock(paths.state):             # the driver that restarts holds the lock
        runner._discard(paths, "again")
        assert os.listdir(paths.state) == ["driver.lock"] and not paths.has_results()
    client = MlflowClient(paths.mlflow)
    exp_id = client.get_experiment_by_name("again").experiment_id
    assert client.search_runs([exp_id]) == []
