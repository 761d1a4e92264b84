"""DAMBQ and LBA through the sweep: the keys (``quant.scheme: dambq``,
``quant.granularity``, ``quant.allocation.*`` searchable like any key, the budget as
LBA's target), and a real LBA sweep whose bits are MLflow metrics each epoch and whose
per-channel bits are an artifact and in its checkpoint."""
from __future__ import annotations

import json
import pathlib

import pytest

from sweep.config import ConfigError, load_experiment, resolve_trial
from sweep.tune.plan import plan_stage
from tests.support.sweeps import store, sweep, write

LBA = """
    name: lba_e2e
    data:
      dataset: synthetic
      synthetic: {train_size: 64, test_size: 32, image_size: 8}
    model: {arch: resnet20}
    quant:
      scheme: dambq
      w_bits: 4
      a_bits: 4
      budget: {avg_w_bits: 2.5, avg_a_bits: 2.5}
      allocation: {method: lba, ratio_start: 0.4, ratio_end: 0.4, schedule_epochs: 3}
    train: {epochs: 4, batch_size: 32, lr: 0.05, device: cpu}
    search: {algorithm: grid, scheduler: {type: fifo}}
    resources: {cpus_per_trial: 1}
"""


def test_allocation_keys_vary_and_the_budget_is_its_target(tmp_path, capsys):
    from sweep.cli.run import main
    path = write(tmp_path, LBA)
    exp = load_experiment(path, ["quant.allocation.ratio_end={grid: [0.3, 0.5]}",
                                 "quant.granularity={grid: [channel, layer]}"], cwd=str(tmp_path))
    plan = plan_stage(exp, "main")
    # 4.0 average bits against a budget of 2.5: a bound would refuse every trial; as LBA's
    # target it refuses none
    assert plan.num_trials() == 4 and not plan.budgeted
    cfgs = [resolve_trial(t) for t in plan.expand_grid()]
    assert {(c.quant.allocation.ratio_end, c.quant.granularity) for c in cfgs} == {
        (0.3, "channel"), (0.3, "layer"), (0.5, "channel"), (0.5, "layer")}
    assert main([str(path), "--dry-run", "--set", "quant.allocation.ratio_end={grid: [0.3, 0.5]}"]) == 0
    out = capsys.readouterr().out
    assert ("avg_w_bits 4.000  avg_a_bits 4.000 at the start; lba lowers them to avg_w_bits <= 2.57, "
            "avg_a_bits <= 2.57") in out
    bad = {"quant.budget=null": ("quant.allocation.method", "lowers the bits to quant.budget"),
           "train.compile=true": ("train.compile", "torch.compile does not trace"),
           "quant.scheme=apot": ("quant.allocation.method", "lowers the bits of DAMBQ channels"),
           "quant.allocation.schedule_epochs=0": ("quant.allocation.schedule_epochs", "integer >= 1"),
           "quant.act_scheme=uniform": ("quant.act_scheme", "DAMBQ quantizes weights and activations together")}
    for override, (key, text) in bad.items():
        with pytest.raises(ConfigError) as err:
            load_experiment(path, [override], cwd=str(tmp_path))
        assert err.value.key == key and text in str(err.value), override
    with pytest.raises(ConfigError, match="granularity applies to scheme 'dambq' only"):
        resolve_trial({"quant": {"w_bits": 4, "a_bits": 4, "granularity": "layer"}})


@pytest.mark.slow
def test_lba_sweep_logs_the_bits_each_epoch_and_reaches_its_target(tmp_path):
    """One LBA trial from random weights: every channel at 4 bits, 0.4 of them lowered after
    each of the first epochs, until both averages are within 2.5 + 0.07."""
    from sweep.cli.evaluate import main as evaluate
    path = write(tmp_path, LBA)
    proc = sweep(tmp_path, path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = store(tmp_path)
    exp = client.get_experiment_by_name("lba_e2e")
    run = next(r for r in client.search_runs([exp.experiment_id])
               if r.data.tags.get("sweep.role") == "trial")
    rid = run.info.run_id
    history = {k: [(m.step, m.value) for m in client.get_metric_history(rid, k)]
               for k in ("avg_w_bits", "avg_a_bits", "bits/weight/layer3.0.conv1", "bits/act/layer1.0.conv1")}
    w = [v for _, v in sorted(history["avg_w_bits"])]
    assert [s for s, _ in sorted(history["avg_w_bits"])] == [0, 1, 2, 3, 4]       # start + each epoch
    assert w[0] == 4.0 and all(b <= a for a, b in zip(w, w[1:])) and w[-1] <= 2.57 + 1e-9
    assert sorted(history["avg_a_bits"])[0] == (0, 4.0) and sorted(history["avg_a_bits"])[-1][1] <= 2.57 + 1e-9
    assert [s for s, _ in history["bits/weight/layer3.0.conv1"]] == [1, 2, 3, 4]
    assert run.data.metrics["avg_w_bits"] == w[-1]                    # what the report reads
    for key in ("quant.allocation.method", "quant.allocation.ratio_end", "quant.granularity"):
        assert key in run.data.params
    # the best epoch is one at the target (not an early one at 4 bits)
    best = int(run.data.metrics["best_epoch"])
    at_best = dict(history["avg_w_bits"])[best]
    assert at_best <= 2.57 + 1e-9
    # bits.json: the best checkpoint's per-channel bits
    local = client.download_artifacts(rid, "bits.json", str(tmp_path / "dl"))
    bits = json.loads(pathlib.Path(local).read_text())
    layer = bits["layers"]["layer3.0.conv1"]
    assert len(layer["channel_w_bits"]) == 64 and len(layer["channel_a_bits"]) == 32
    assert set(layer["channel_w_bits"]) <= {0, 1, 2, 3, 4}
    assert bits["avg_w_bits"] == pytest.approx(at_best)
    # sweep.evaluate takes the bits from the checkpoint
    state = json.loads((tmp_path / "sweeps" / "lba_e2e" / "sweep.json").read_text())
    trial = next(iter(state["stages"]["main"]["trials"].values()))
    assert trial["bits"].startswith("MIXED(")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate([trial["checkpoint"], "--json"]) == 0
    scored = json.loads(buf.getvalue())
    assert scored["avg_w_bits"] == pytest.approx(at_best)
    assert scored["dambq_mean_bits"]["layer3.0.conv1"]["w_bits"] == pytest.approx(layer["w_bits"])
