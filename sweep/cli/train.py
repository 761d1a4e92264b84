"""Train one configuration directly (no Ray, no MLflow): for debugging a trial.

    python -m sweep.train FILE.yaml [--set key=value ...] [--stage NAME] [--out DIR]

Writes ``best.pt`` and ``last.pt`` into ``./sweeps/<name>/train-<timestamp>/`` (or
``--out``) and prints per-epoch progress. A file whose values are search distributions
is refused: pick values with ``--set`` or run the search with ``run_sweep.py``.
``train.init: runs:/...`` or ``models:/...`` is looked up in the default store of sweeps
run from this directory (``./sweeps/mlflow.db``) or in ``$MLFLOW_TRACKING_URI``.
Exit status: 0 trained; 1 training failed (a NaN or infinite loss, an error); 2 the file,
an override, the data or the initial checkpoint is invalid.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from models.checkpoint import CheckpointError
from quant import QuantConfigError
from sweep.config import ConfigError, get_dotted, load_experiment, resolve_trial
from sweep.train.data import DataError
from sweep.config.space import find_distributions


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweep.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a search-space YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key (repeatable), e.g. --set train.lr=0.01")
    p.add_argument("--stage", help="which stage of the file to train (default: the only one)")
    p.add_argument("--out", help="output folder (default ./sweeps/<name>/train-<timestamp>/)")
    return p


def _fmt(m: dict) -> str:
    parts = [f"epoch {m['epoch']:>3d}"]
    if "train_loss" in m:
        parts.append(f"train loss {m['train_loss']:.4f} acc {m['train_acc']:6.2f}%")
    parts.append(f"val loss {m['val_loss']:.4f} acc {m['val_acc']:6.2f}%")
    if "test_acc" in m:
        parts.append(f"test acc {m['test_acc']:6.2f}%")
    if "bits/avg_w_bits" in m:
        parts.append(f"bits w {m['bits/avg_w_bits']:.3f} a {m['bits/avg_a_bits']:.3f}")
    parts.append(f"lr {m['lr']:.4g}  {m['epoch_time_s']:.1f} s")
    return "  ".join(parts) + ("  *best" if m.get("is_best") else "")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        exp = load_experiment(args.file, args.overrides)
        names = [s.name for s in exp.stages]
        stage = args.stage or (names[0] if len(names) == 1 else None)
        if stage is None:
            raise ConfigError(exp.file, "stages", f"the file has stages {', '.join(names)}; "
                                                  "choose one with --stage")
        if stage not in names:
            raise ConfigError(exp.file, "stages", f"no stage {stage!r}; stages: {', '.join(names)}")
        tree = exp.stage_tree(stage)
        trial_tree = {k: tree[k] for k in ("data", "model", "quant", "train") if k in tree}
        found = find_distributions(trial_tree)
        if found or get_dotted(tree, "search.variants", None):
            keys = ", ".join(".".join(p) for p, _ in found) if found else "search.variants"
            raise ConfigError(exp.file, keys.split(", ")[0],
                              f"holds search distributions ({keys}); sweep.train trains one "
                              "configuration: fix the values with --set, or run the search with "
                              f"python run_sweep.py {args.file}")
        cfg = resolve_trial(trial_tree)
        search = exp.stage_search(stage)
        init_path = None
        if cfg.train.init is not None and str(cfg.train.init).startswith(("runs:/", "models:/")):
            from sweep.track.resolve import resolve_in_default_store   # MLflow, only for these
            init_path = resolve_in_default_store(str(cfg.train.init))
        from sweep.train.engine import Trainer
        trainer = Trainer(cfg, metric=search.metric, mode=search.mode, init_path=init_path)
    except (ConfigError, DataError, CheckpointError, QuantConfigError, ValueError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("sweeps") / exp.name / f"train-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    d = trainer.data
    print(f"{exp.name}: {cfg.model.arch} W{cfg.quant.w_bits}A{cfg.quant.a_bits} {cfg.quant.scheme}"
          f"{f' z={cfg.quant.z:g}' if cfg.quant.z is not None else ''} on {d.describe()}; "
          f"{cfg.train.epochs} epochs, device {trainer.device}", flush=True)
    print(f"writing to {out}", flush=True)

    def on_epoch(m, tr):
        print(_fmt(m), flush=True)
        if m["epoch"] == 0:
            return
        if m.get("is_best"):
            tr.save(out / "best.pt", with_state=False)
        tr.save(out / "last.pt")

    from sweep.train.engine import NonFiniteLoss
    try:
        summary = trainer.run(on_epoch)
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    best, last = summary["best"], summary["last"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if best:
        print(f"best {search.metric} {best[search.metric]:.4g} at epoch {best['epoch']}; "
              f"last {last[search.metric]:.4g} at epoch {last['epoch']}")
    elif trainer.allocator is not None:
        print(f"warning: the bit allocation ended at avg_w_bits {last['bits/avg_w_bits']:.3f}, "
              f"avg_a_bits {last['bits/avg_a_bits']:.3f}, above its target (quant.budget + margin "
              f"{cfg.quant.allocation.margin:g}), so no epoch counts as best; give it more epochs or a "
              "larger quant.allocation.ratio_end", file=sys.stderr)
    print(f"checkpoints: {out / 'best.pt' if best else '(no best)'}  {out / 'last.pt'}")
    print(f"evaluate:    python -m sweep.evaluate {out / ('best.pt' if best else 'last.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
