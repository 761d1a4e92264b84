"""The stages of a sweep, in order, each one Ray Tune ``Tuner`` (``sweep.tune.plan`` builds
its space), with the MLflow callback of ``sweep.tune.callback``; then the summary.

Resume: a stage recorded ``finished`` in ``sweep.json`` is not rerun; an unfinished
one is continued with ``Tuner.restore`` (finished trials are kept, unfinished ones
restart from their last checkpoint, errored ones stay failed).
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

from mlflow.exceptions import MlflowException
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from sweep.config import get_dotted
from sweep.config.space import to_plain
from sweep.track import names, store, views
from sweep.track.pytorch_model import save_pytorch_model
from sweep.tune import cluster, lineage
from sweep.tune.callback import SweepCallback, register
from sweep.tune.plan import StagePlan, optuna_space, ray_space
from sweep.tune.progress import fmt
from sweep.tune.records import StageRun, best_trial
from sweep.tune.state import SweepState
from sweep.tune.trainable import train_trial

__all__ = ["run_stages", "fingerprint"]

MAX_FAILURES = 2            # retries of a trial that raises, from its last checkpoint


def fingerprint(exp) -> dict:
    """What must not change between a sweep and its --resume (resources may)."""
    out = {}
    for s in exp.stages:
        search = exp.stage_search(s.name)
        out[s.name] = json.dumps({
            "spaces": to_plain(exp.trial_spaces(s.name)),
            "search": {k: str(getattr(search, k)) for k in ("algorithm", "num_samples", "seed",
                                                              "metric", "mode", "scheduler")}},
            sort_keys=True, default=str)
    return out


def _trial_name(trial) -> str:
    return trial.trial_id           # Ray's folders; MLflow run names say what varies


# ---------------------------------------------------------------- one stage

def _tuner(plan: StagePlan, trainable, meta: dict, paths, key: str):
    s = plan.search
    max_t = plan.max_epochs()
    if s.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t,
                                  grace_period=min(s.scheduler.grace_period, max_t),
                                  reduction_factor=s.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    if s.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        optuna.logging.disable_default_handler()       # its lines go to driver.log
        searcher = OptunaSearch
        extra = {}
        if plan.budgeted:                               # over-budget points: infeasible, asked again
            from sweep.tune.search import BudgetedOptunaSearch
            searcher, extra = BudgetedOptunaSearch, {"stage_key": key}
        search_alg = searcher(space=optuna_space(plan), metric=s.metric, mode=s.mode,
                              sampler=optuna.samplers.TPESampler(seed=s.seed), **extra)
        space, num_samples = {"_sweep": meta}, s.num_samples * len(plan.arm_trees)
    else:
        search_alg = BasicVariantGenerator(random_state=s.seed)
        space, num_samples = {**ray_space(plan), "_sweep": meta}, s.num_samples
        if plan.draws is not None:          # num_samples repeats are drawn already
            num_samples = 1
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, search_alg=search_alg, scheduler=scheduler,
            num_samples=num_samples, max_concurrent_trials=s.max_concurrent,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=paths.sweep, callbacks=[SweepCallback(key)],
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="is_best", checkpoint_score_order="max"),
            verbose=0, log_to_file=True))


def _run_stage(plan: StagePlan, exp, paths, args, recorder, state, refs, init_files) -> None:
    s, r = plan.search, plan.resources
    meta = {"stage": plan.name, "metric": s.metric, "mode": s.mode,
            "init_candidates": lineage.init_candidates(plan, state), "init_files": init_files}
    trainable = tune.with_resources(tune.with_parameters(train_trial, data_refs=refs),
                                    {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})
    stage_set = to_plain(exp.stage(plan.name).overrides)
    overrides = {f"stage.set.{k}": v for k, v in stage_set.items()}
    # the values every trial of the stage takes, under their own keys: the runs table's
    # parameter columns then fill the stage's row too
    shared = {}
    for key in stage_set:
        values = {json.dumps(get_dotted(t, key, None), default=str) for t in plan.arm_trees}
        value = get_dotted(plan.arm_trees[0], key, None)
        if len(values) == 1 and isinstance(value, (str, int, float, bool)):
            shared[key] = value
    recorder.stage_run(plan.name, params={
        "stage": plan.name, "search.algorithm": s.algorithm, "search.num_samples": s.num_samples,
        "search.metric": s.metric, "search.mode": s.mode, "search.scheduler": s.scheduler.type,
        "trials": plan.num_trials(), **overrides, **shared})
    try:                                    # what was run: the file and the command line
        recorder.log_stage_file(plan.name, exp.file, names.EXPERIMENT_FILE_DIR)
        recorder.log_stage_text(plan.name, shlex.join([os.path.basename(sys.executable),
                                                       *sys.argv]) + "\n",
                                names.COMMAND_ARTIFACT)
    except Exception as exc:                # noqa: BLE001 - the stage runs without them
        print(f"warning: stage {plan.name}: logging the experiment file failed: {exc}",
              file=sys.stderr)
    key = f"{paths.state}::{plan.name}"
    stage_dir = paths.stage(plan.name)
    restore = args.resume and _restorable(stage_dir, paths.remote)
    if not restore:
        state.data["stages"][plan.name] = {"status": "running", "trials": {}}
        if not paths.remote and os.path.isdir(stage_dir):
            shutil.rmtree(stage_dir)                # a start that never got going
    run = StageRun(plan, recorder, state, meta, cache_dir=os.path.join(paths.state, "cache"))
    print(f"\n== stage {plan.name}: {plan.num_trials()} trial(s), {s.algorithm} search, "
          f"{s.scheduler.type} scheduler, {r.cpus_per_trial:g} CPU / {r.gpus_per_trial:g} GPU "
          f"per trial, {s.metric} ({s.mode})", flush=True)
    if plan.rejected() is not None:
        print(f"   quant.budget: {plan.rejected()} draw(s) over the budget were rejected and drawn "
              "again; none of them is trained", flush=True)
    register(key, run)
    started = time.time()
    try:
        if restore:
            print(f"   continuing from {stage_dir}", flush=True)
            tuner = tune.Tuner.restore(stage_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = _tuner(plan, trainable, meta, paths, key)
        run.table.line(f"starting {plan.num_trials()} trial(s) of stage {plan.name} "
                       "(the first results come once the workers have loaded the data)")
        results = tuner.fit()
        run.reconcile(results)
    finally:
        register(key, None)
    entry = state.stage(plan.name)
    entry["best"] = run.best()
    entry["status"] = "finished"
    entry["seconds"] = round(time.time() - started, 1)
    _register_best(exp, plan, recorder, entry, os.path.join(paths.state, "cache"))
    if entry["best"]:
        best = entry["best"]
        _save_view(recorder, views.charts_view_id(plan.name),
                   f"{plan.name} best ({best.get('run_name') or best['trial_id']}): charts",
                   views.charts_state(best["run_id"]))
    state.save()
    if plan.budgeted:
        recorder.log_stage_metrics(plan.name, {"rejected_over_budget": entry.get("rejected_over_budget", 0)})
    recorder.finish_stage(plan.name, "FINISHED" if entry["best"] else "FAILED")


def _restorable(stage_dir: str, remote: bool) -> bool:
    """A Tuner state with at least one experiment snapshot (a driver killed while the
    Tuner was being created leaves tuner.pkl alone: that stage starts afresh)."""
    if not tune.Tuner.can_restore(stage_dir):
        return False
    return remote or bool(glob.glob(os.path.join(stage_dir, "experiment_state-*.json")))


def _save_view(recorder, view_id: str, name: str, state: dict) -> None:
    """A saved view of the experiment in the MLflow UI (``sweep.track.views``); the
    sweep goes on without it."""
    try:
        views.save_view(recorder.client, recorder.experiment_id, view_id, name, state)
    except Exception as exc:                # noqa: BLE001 - the records stand without it
        print(f"warning: saving the MLflow view {name!r} failed: {exc}", file=sys.stderr)


def _table_params(exp, plans) -> list[str]:
    """The parameters the runs table shows: what each stage searches or sets (its
    ``train.init`` aside)."""
    keys = []
    for plan in plans:
        keys += plan.searched
        keys += [k for k in exp.stage(plan.name).overrides if k != "train.init"]
    return list(dict.fromkeys(keys))


def _version_tags(recorder, t: dict, metric: str) -> dict:
    """What a registered version says about itself: the figures to quote, the bits, the
    trial, and the lineage tags of the run it comes from."""
    tags = {"sweep.experiment": recorder.experiment_name, "sweep.trial_id": t["trial_id"],
            "sweep.run_name": t.get("run_name"), "bits": t.get("bits"),
            "search.metric": metric, f"best_{metric}": t.get("metric"),
            names.BEST_EPOCH_METRIC: t.get("best_epoch"),
            names.BEST_VAL_METRIC: t.get("val_acc_at_best"),
            names.TEST_AT_BEST_METRIC: t.get("test_acc_at_best")}
    run_tags = recorder.client.get_run(t["run_id"]).data.tags
    tags.update({k: v for k, v in run_tags.items() if k.startswith("lineage.")})
    return tags


def _model_folder(recorder, t: dict, cache: str) -> str:
    """Log the trial's MLflow PyTorch model (``model/``) unless it holds one already;
    returns the artifact path to register (``checkpoint`` when the model cannot be
    made)."""
    if any(f.path == names.MODEL_DIR for f in recorder.client.list_artifacts(t["run_id"])):
        return names.MODEL_DIR
    try:
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mlflow-model-", dir=cache) as tmp:
            folder = save_pytorch_model(t["checkpoint"], os.path.join(tmp, names.MODEL_DIR))
            recorder.log_model_folder(t["run_id"], folder)
        return names.MODEL_DIR
    except Exception as exc:            # noqa: BLE001 - the checkpoint is registered instead
        print(f"warning: trial {t['trial_id']}: saving it as an MLflow PyTorch model failed "
              f"({type(exc).__name__}: {exc}); registering its checkpoint folder",
              file=sys.stderr)
        return names.CHECKPOINT_DIR


def _register_best(exp, plan, recorder, entry, cache: str) -> None:
    per_arch = {}
    for t in entry["trials"].values():
        per_arch.setdefault(t["arch"], []).append(t)
    entry["registered"] = {}
    metric = plan.search.metric
    for arch in sorted(per_arch):
        t = best_trial(per_arch[arch], plan.search.mode)
        if t is None:
            continue
        name = names.registered_model_name(exp.name, arch)
        alias = names.stage_alias(plan.name)
        try:
            path = _model_folder(recorder, t, cache)
            quote = t.get("test_acc_at_best")
            description = (f"Stage {plan.name}, trial {t.get('run_name') or t['trial_id']}: "
                           f"{t.get('bits') or ''} {arch}; test accuracy "
                           f"{fmt(quote)} % at epoch {t.get('best_epoch')} (the best by {metric}).")
            version = recorder.register_best(plan.name, t["run_id"], name, alias,
                                             artifact_path=path,
                                             tags=_version_tags(recorder, t, metric),
                                             description=description)
            entry["registered"][arch] = f"models:/{name}@{alias} (version {version.version})"
            entry.setdefault("registered_versions", {})[arch] = f"models:/{name}/{version.version}"
        except Exception as exc:            # noqa: BLE001 - the results stand without it
            print(f"warning: registering {name}@{alias} failed: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- all stages

def run_stages(exp, plans, paths, args, recorder, bundles) -> int:
    import ray
    t0 = time.time()
    state = SweepState(os.path.join(paths.state, "sweep.json"))
    fp = fingerprint(exp)
    old = state.data.get("fingerprint") or {}
    changed = [n for n in fp if n in old and old[n] != fp[n]]
    if changed:
        print(f"{args.file}: the search space of stage(s) {', '.join(changed)} differs from the "
              "sweep being resumed; resume with the same file and --set, or use --restart",
              file=sys.stderr)
        return 2
    state.data.update(fingerprint=fp, name=exp.name, file=exp.file)
    state.save()
    try:
        init_files = lineage.resolve_init_files(plans, recorder.client,
                                                 os.path.join(paths.state, "cache"))
    except (OSError, ValueError, MlflowException) as exc:   # a missing file, run, model or alias
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{args.file}: train.init: {first}", file=sys.stderr)
        return 2
    if args.address and ray.is_initialized():    # trials on other machines open these files
        problem = cluster.check_seen(sorted({f["path"] for f in init_files.values()}),
                                     "train.init", "put it in a folder every node sees at "
                                     "the same path (the --storage folder, when shared)")
        if problem:
            print(f"{args.file}: {problem}", file=sys.stderr)
            return 2
    _save_view(recorder, views.RUNS_VIEW, f"{exp.name}: runs and the figures to quote",
               views.runs_table_state(_table_params(exp, plans)))
    refs = None                         # the datasets in the object store, once a stage runs
    skipped = []
    for plan in plans:
        entry = state.stage(plan.name)
        if entry.get("status") == "finished":
            print(f"\n== stage {plan.name}: finished earlier, not rerun", flush=True)
            continue
        reason = lineage.blocked(plan, state)
        if reason:
            print(f"\n== stage {plan.name}: skipped: {reason}", flush=True)
            skipped.append((plan.name, reason))
            continue
        if refs is None:
            refs = {key: ray.put(bundle.to_arrays()) for key, bundle in bundles.items()}
        _run_stage(plan, exp, paths, args, recorder, state, refs, init_files)
    return _summary(exp, plans, paths, recorder, state, skipped, t0)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _has_val_split(trial: dict) -> bool:
    return ((trial.get("config") or {}).get("data") or {}).get("val_fraction", 0) > 0


def _summary(exp, plans, paths, recorder, state, skipped, t0: float) -> int:
    print("\n== results", flush=True)
    ui = store.ui_command(paths.mlflow)
    base = "http://127.0.0.1:5000" if ui else paths.mlflow
    failed, empty = [], []
    for plan in plans:
        entry = state.data["stages"].get(plan.name) or {}
        if entry.get("status") != "finished":
            continue
        trials = entry["trials"].values()
        failed += [(plan.name, t) for t in trials if t["status"] == "FAILED"]
        counts = (f"{len(trials)} trial(s): {sum(t['status'] == 'FINISHED' for t in trials)} finished "
                  f"({sum(bool(t['stopped_early']) for t in trials)} stopped early), "
                  f"{sum(t['status'] == 'FAILED' for t in trials)} failed")
        best = entry.get("best")
        if not best:
            empty.append(plan.name)
            print(f"stage {plan.name}: no finished trial; {counts}")
            continue
        metric = plan.search.metric
        took = f" in {_duration(entry['seconds'])}" if entry.get("seconds") is not None else ""
        named = best.get("run_name") or best["trial_id"]
        named += f" ({best['trial_id']})" if named != best["trial_id"] else ""
        print(f"stage {plan.name}{took}: best trial {named}: {metric} {fmt(best['metric'])} "
              f"at epoch {best['best_epoch']} of {best['epochs']}; {counts}")
        if "rejected_over_budget" in entry:
            print(f"  budget:     {entry['rejected_over_budget']} configuration(s) over quant.budget "
                  "rejected, never trained")
        if best.get("test_acc_at_best") is not None:
            note = ("" if _has_val_split(best) else
                    " (no validation split: the test set chose the epoch)")
            print(f"  to quote:   test accuracy {fmt(best['test_acc_at_best'])} % at epoch "
                  f"{best['best_epoch']}{note}")
        if best["values"]:
            print("  config:     " + "  ".join(f"{k}={fmt(v)}" for k, v in best["values"].items()))
        print(f"  checkpoint: {best['checkpoint']}")
        print(f"  MLflow run: {best['run_id']}"
              + "".join(f"; registered {v}" for v in (entry.get("registered") or {}).values()))
        if ui or store.is_http(paths.mlflow):
            print(f"              {store.run_link(base, recorder.experiment_id, best['run_id'])}")
            charts = store.view_link(base, recorder.experiment_id,
                                     views.charts_view_id(plan.name), charts=True)
            print(f"  charts:     {charts}")
            for uri in (entry.get("registered_versions") or {}).values():
                name, version = uri[len("models:/"):].rsplit("/", 1)
                print(f"  model:      {store.model_link(base, name, version)}")
        print(f"  evaluate:   python -m sweep.evaluate {best['checkpoint']}")
        for uri in (entry.get("registered_versions") or {}).values():
            print(f"              python -m sweep.evaluate {uri}")
    for name, reason in skipped:
        print(f"stage {name}: skipped: {reason}")
    print(f"wall time: {_duration(time.time() - t0)} (this run of the command)")
    if failed:
        print(f"failed trials ({len(failed)}):")
        for stage, t in failed:
            print(f"  {stage} {t['trial_id']}: {t['failure']}: {t['error']}")
    if ui:
        print(f"MLflow UI:  {ui}")
    print(f"  open {store.experiment_link(base, recorder.experiment_id)}")
    print(f"  or, with the figures to quote as columns, "
          f"{store.view_link(base, recorder.experiment_id, views.RUNS_VIEW)}", flush=True)
    return 1 if (failed or skipped or empty) else 0
