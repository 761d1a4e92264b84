"""PNG plots of a sweep's results (matplotlib, Agg; no pyplot state).

- ``acc_vs_z_<stage>.png``: N_grid rows of a stage, accuracy against Z (log axis), one
  line per model/dataset/bits, with the same stage's APoT row of those bits as a
  horizontal line (± std band) and published points when ``--compare-to`` gave some;
- ``acc_vs_bits.png``: accuracy against (average) weight bits, one line per
  model/dataset/scheme (mixed precision a line of its own), full precision as a
  horizontal line; each point is the best
  configuration at that bit width (over Z, lr, weight decay, stages);
- ``pareto.png``: accuracy against weight size and against BOPs (``quant.cost``, as each
  trial logged them), one point per configuration, the Pareto front (no configuration
  both smaller, or cheaper, and more accurate) drawn as a step line with its points
  labelled by their bits;
- ``alphas_<stage>_<run>.png``: a run's final clipping thresholds per layer (weight and
  activation), the chart form of the reference's printed ``wgt_alpha`` lists;
- ``alpha_trajectories_<stage>_<run>.png``: those thresholds over epochs.

The accuracy plotted is a row's *reported* accuracy (``sweep.report.results.Trial.reported``):
test accuracy at the epoch the search metric chose; mean ± std over seeds.
Each PNG is logged to the parent run of every stage it draws from, under ``report/``.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from sweep.metrics import best_of, pareto_front
from sweep.report.results import (ExperimentResults, ReportError, Row, Trial, alpha_history,
                           natural_key, norm_name as _norm, read_alphas)

__all__ = ["write_plots", "plot_acc_vs_z", "plot_acc_vs_bits", "plot_pareto", "plot_alphas",
           "plot_alpha_trajectories", "best_trial"]

ARTIFACT_DIR = "report"


def _safe(text: Any) -> str:
    return re.sub(r"[^\w.\-]", "_", str(text))


def _g(x: float) -> str:
    return f"{x:g}"


def acc_label(rows: list[Row]) -> str:
    splits = {r.split for r in rows}
    if splits == {"val"}:
        return "test accuracy % at the best-val epoch"
    if splits == {"test"}:
        return "test accuracy % at the best epoch"
    return "test accuracy % at the chosen epoch"


def _best_row(rows: list[Row]) -> Row:
    return max(rows, key=lambda r: r.reported.mean)


def _errorbar(ax, rows: list[Row], xs: list[float], **kw) -> None:
    """Mean ± std points; a point with ASHA-stopped trials gets a red ring."""
    ys = [r.reported.mean for r in rows]
    es = [r.reported.std or 0.0 for r in rows]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, **kw)
    stopped = [(x, y) for r, x, y in zip(rows, xs, ys) if r.n_stopped]
    if stopped:
        seen = any(h.get_label() == _STOPPED for h in ax.lines)
        ax.plot(*zip(*stopped), linestyle="none", marker="o", markersize=11,
                markerfacecolor="none", markeredgecolor="red",
                label=None if seen else _STOPPED)


_STOPPED = "stopped early (ASHA)"


FORMATS = ("png", "pdf", "svg")
PRINT_DPI = 300                 # a PNG for print; PDF and SVG are vector either way


def _save(fig: Figure, path: str) -> str:
    """Save in the format the file name ends in (``write_plots(fmt=)``); SVG text stays
    text (editable, searchable)."""
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig.savefig(path, dpi=PRINT_DPI, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------ accuracy

def plot_acc_vs_z(rows: list[Row], stage: str, path: str, published=None) -> str | None:
    """N_grid rows of ``stage``; None when it has none."""
    ngrid = [r for r in rows if r.stage == stage and r.scheme == "ngrid"
             and isinstance(r.z, (int, float)) and r.reported is not None]
    if not ngrid:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    groups: dict[tuple, list[Row]] = {}
    for r in ngrid:
        groups.setdefault((r.model, r.dataset, r.bits_label), []).append(r)
    zs = sorted({r.z for r in ngrid})
    for i, ((model, dataset, bits), grp) in enumerate(sorted(groups.items())):
        color = f"C{i % 10}"
        per_z = {}
        for r in grp:
            per_z.setdefault(r.z, []).append(r)
        pts = [_best_row(per_z[z]) for z in sorted(per_z)]
        _errorbar(ax, pts, [p.z for p in pts], color=color,
                  label=f"N_grid {model} {dataset} {bits} ({seeds_note(pts)})")
        apot = [r for r in rows if r.stage == stage and r.scheme == "apot"
                and (r.model, r.dataset, r.bits_label) == (model, dataset, bits)
                and r.reported is not None]
        if apot:
            b = _best_row(apot).reported
            ax.axhline(b.mean, color=color, linestyle="--",
                       label=f"APoT baseline {model} {bits}: {b.mean:.2f}")
            if b.std:
                ax.axhspan(b.mean - b.std, b.mean + b.std, color=color, alpha=0.12)
        pubs = [p for p in _published_for(published, model, dataset, grp[0])
                if p.scheme == "ngrid" and p.z is not None]
        if pubs:
            pubs.sort(key=lambda p: p.z)
            ax.plot([p.z for p in pubs], [p.accuracy for p in pubs], marker="x", color=color,
                    linestyle=":", label=f"published ({pubs[0].source})")
    ax.set_xscale("log")
    pub_zs = {p.z for p in (published or []) if p.scheme == "ngrid" and p.z is not None
              and any(_pub_fits(p, g[0]) for g in groups.values())}
    ticks = sorted(set(zs) | pub_zs)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _g(x)))
    ax.set_xlabel("Z (N_grid grid parameter, log scale)")
    ax.set_ylabel(acc_label(ngrid))
    ax.set_title(f"{stage}: accuracy against Z ({seeds_note(rows)})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _pub_fits(pub, row: Row) -> bool:
    w, a = row.bits
    return (pub.split == "test" and _norm(pub.model) == _norm(row.model)
            and _norm(pub.dataset) == _norm(row.dataset) and w is not None
            and math.isclose(pub.w_bits, w) and math.isclose(pub.a_bits, a))


def _published_for(published, model, dataset, row: Row) -> list:
    """Published test-split rows of the same model, dataset and bits as ``row``."""
    return [p for p in (published or []) if _pub_fits(p, row)]


def seeds_note(rows: list[Row]) -> str:
    """What a point is over: ``one seed`` or ``mean ± std over n seeds``."""
    ns = sorted({len(r.trials) for r in rows})
    if ns == [1]:
        return "one seed"
    return f"mean ± std over {'/'.join(map(str, ns))} seeds"


def plot_acc_vs_bits(rows: list[Row], path: str, published=None) -> str | None:
    """None when no quantized row has an accuracy. Published rows of the models and
    datasets drawn are marked with their source, in the colour of our curve of the same
    model and scheme; rows of another split than ours (training-set accuracy) are hollow
    and labelled not comparable."""
    quantized = [r for r in rows if not r.full_precision and r.reported is not None
                 and r.bits[0] is not None]
    if not quantized:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    groups: dict[tuple, list[Row]] = {}
    for r in quantized:
        scheme = f"{r.scheme} mixed" if r.mixed else str(r.scheme)
        groups.setdefault((str(r.model), str(r.dataset), scheme), []).append(r)
    models = sorted({(m, d) for m, d, _ in groups})
    for i, key in enumerate(sorted(groups)):
        per_bits = {}
        for r in groups[key]:
            per_bits.setdefault(r.bits[0], []).append(r)
        pts = [_best_row(per_bits[b]) for b in sorted(per_bits)]
        label = f"{key[2]}" if len(models) == 1 else f"{key[2]} ({key[0]}, {key[1]})"
        _errorbar(ax, pts, [p.bits[0] for p in pts], color=f"C{i % 10}", label=label)
        for p in pts:
            ax.annotate(p.bits_label, (p.bits[0], p.reported.mean), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    for j, (model, dataset) in enumerate(models):
        fp = [r for r in rows if r.full_precision and r.reported is not None
              and (str(r.model), str(r.dataset)) == (model, dataset)]
        if fp:
            b = _best_row(fp).reported
            ax.axhline(b.mean, color="k", linestyle=("--", ":", "-.")[j % 3], linewidth=1,
                       label=f"FP32 {model} {dataset}: {b.mean:.2f}")
    markers = "Dv^<>sPX"                  # fillable first: a hollow one marks another split
    sources = list(dict.fromkeys(p.source for p in (published or [])))
    drawn = {(_norm(m), _norm(d)) for m, d in models}
    colour = {(_norm(m), _norm(d), s): f"C{i % 10}" for i, (m, d, s) in enumerate(sorted(groups))}
    pubs = [p for p in (published or []) if not p.full_precision
            and (_norm(p.model), _norm(p.dataset)) in drawn]
    for source, split in dict.fromkeys((p.source, p.split) for p in pubs):
        # a published point takes the colour of our curve of its model and scheme; a
        # training-set figure is hollow and says it is not comparable with our test figures
        marker, hollow = markers[sources.index(source) % len(markers)], split != "test"
        for p in (p for p in pubs if (p.source, p.split) == (source, split)):
            c = colour.get((_norm(p.model), _norm(p.dataset), p.scheme), "0.3")
            ax.plot([p.w_bits], [p.accuracy], linestyle="none", marker=marker, markersize=7,
                    color=c, markerfacecolor="none" if hollow else c)
        ax.plot([], [], linestyle="none", marker=marker, markersize=7, color="0.3",
                markerfacecolor="none" if hollow else "0.3",
                label=f"published ({source})" + (f": {split}-set accuracy, not comparable †"
                                                  if hollow else ""))
    xs = sorted({r.bits[0] for r in quantized} | {p.w_bits for p in pubs})
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _g(round(x, 2))))
    ax.set_xlabel("weight bits (average for mixed precision)")
    ax.set_ylabel(acc_label(quantized))
    title = "accuracy against weight bits"
    if len(models) == 1:
        title = f"{models[0][0]} {models[0][1]}: " + title
    ax.set_title(title + f"\n(best configuration per point; {seeds_note(quantized)})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


# -------------------------------------------------------------------------- Pareto

_PARETO_AXES = (("weight_size_bytes", 1024, "weight size (KiB)", "weight size"),
                ("bops", 1e9, "BOPs per image (10^9)", "BOPs"))


def plot_pareto(rows: list[Row], path: str) -> str | None:
    """None when fewer than two rows have a cost and an accuracy."""
    pts = [r for r in rows if r.cost and r.reported is not None
           and all(k in r.cost for k, *_ in _PARETO_AXES)]
    if len(pts) < 2:
        return None
    fig = Figure(figsize=(12, 4.8))
    stages = list(dict.fromkeys(r.stage for r in pts))
    schemes = {r.scheme for r in pts}
    for i, (key, unit, xlabel, what) in enumerate(_PARETO_AXES):
        ax = fig.add_subplot(1, 2, i + 1)
        x = lambda r: r.cost[key] / unit           # noqa: E731
        for j, stage in enumerate(stages):
            mine = [r for r in pts if r.stage == stage]
            ax.errorbar([x(r) for r in mine], [r.reported.mean for r in mine],
                        yerr=[r.reported.std or 0.0 for r in mine], linestyle="none", marker="o",
                        color=f"C{j % 10}", alpha=0.75, capsize=2,
                        label=f"stage {stage}" if len(stages) > 1 else "configurations")
        front = pareto_front(pts, x, lambda r: r.reported.mean)
        ax.plot([x(r) for r in front], [r.reported.mean for r in front], color="crimson",
                drawstyle="steps-post", linewidth=1.5, zorder=3, label="Pareto front")
        ax.plot([x(r) for r in front], [r.reported.mean for r in front], linestyle="none",
                marker="*", markersize=12, color="crimson", zorder=4)
        on_front = {id(r) for r in front}
        for r in pts:               # every point named: its bits, and its scheme where they differ
            ax.annotate(f"{r.bits_label} {r.scheme}" if len(schemes) > 1 else r.bits_label,
                        (x(r), r.reported.mean), fontsize=7, textcoords="offset points",
                        xytext=(5, -10), color="crimson" if id(r) in on_front else "0.25")
        ax.margins(x=0.12)          # room for the labels of the outermost points
        if max(x(r) for r in pts) / max(min(x(r) for r in pts), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(acc_label(pts))
        ax.set_title(f"accuracy against {what}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    models = sorted({(str(r.model), str(r.dataset)) for r in pts})
    head = f"{models[0][0]} {models[0][1]}: " if len(models) == 1 else ""
    fig.suptitle(f"{head}{len(pts)} configurations, Pareto front in red "
                 f"({seeds_note(pts)})", fontsize=10)
    return _save(fig, path)


# -------------------------------------------------------------------------- alphas

def _run_title(trial: Trial) -> str:
    row = Row([trial], [])
    z = f", Z={_g(row.z)}" if isinstance(row.z, (int, float)) else ""
    named = trial.run_name if trial.run_name and trial.run_name != trial.trial_id else ""
    who = f"{named} (trial {trial.trial_id}, run {trial.run_id[:8]})" if named else \
        f"trial {trial.trial_id} (run {trial.run_id[:8]})"
    return (f"{trial.stage} / {who}: "
            f"{row.model} {row.dataset} {row.bits_label} {row.scheme}{z}")


def plot_alphas(alphas: dict[str, dict[str, float]], title: str, path: str,
                source: str = "") -> str | None:
    """Bars of the weight and activation clipping thresholds per layer; None when the
    run has none (full precision)."""
    layers = sorted(set(alphas["weight"]) | set(alphas["act"]), key=natural_key)
    if not layers:
        return None
    width = max(7.0, 0.26 * len(layers) + 2)
    fig = Figure(figsize=(width, 6.5))
    axes = fig.subplots(2, 1, sharex=True)
    xs = range(len(layers))
    for ax, kind, label, color in ((axes[0], "weight", "weight alpha (wgt_alpha)", "C0"),
                                   (axes[1], "act", "activation alpha (act_alpha)", "C1")):
        vals = [alphas[kind].get(name, math.nan) for name in layers]
        ax.bar(xs, vals, color=color)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_xticks(list(xs))
    axes[1].set_xticklabels(layers, rotation=90, fontsize=7)
    axes[1].set_xlabel("layer")
    fig.suptitle(title + (f"\nfinal clipping thresholds ({source})" if source else ""),
                 fontsize=9)
    return _save(fig, path)


LINE_STYLES = ("-", "--", ":", "-.")
LEGEND_ROWS = 30                # layers per legend column


def layer_styles(n: int) -> list[tuple[str, str]]:
    """(colour, line style) of ``n`` layers, no two alike up to 80: the 20 colours of
    ``tab20`` under each of four line styles."""
    import matplotlib
    colours = matplotlib.colormaps["tab20"].colors
    return [(colours[i % 20], LINE_STYLES[(i // 20) % 4]) for i in range(n)]


def plot_alpha_trajectories(history: dict[str, dict[str, dict[int, float]]], title: str,
                            path: str) -> str | None:
    """Each layer's threshold against epoch (step 0: before training), every layer named
    in the legend beside the plots, first layer to last."""
    layers = sorted(set(history["weight"]) | set(history["act"]), key=natural_key)
    if not layers:
        return None
    columns = math.ceil(len(layers) / LEGEND_ROWS)
    fig = Figure(figsize=(8 + 1.8 * columns, max(6.5, 0.16 * min(len(layers), LEGEND_ROWS) + 1.5)))
    axes = fig.subplots(2, 1, sharex=True)
    styles = dict(zip(layers, layer_styles(len(layers))))
    for ax, kind, label in ((axes[0], "weight", "weight alpha"),
                            (axes[1], "act", "activation alpha")):
        for name in layers:
            series = history[kind].get(name)
            if series:
                steps = sorted(series)
                colour, style = styles[name]
                ax.plot(steps, [series[s] for s in steps], color=colour, linestyle=style,
                        linewidth=1.2, marker="." if len(steps) < 3 else None)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("epoch (0: before training)")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=c, linestyle=ls, linewidth=1.2) for c, ls in
               (styles[name] for name in layers)]
    fig.legend(handles, layers, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=columns,
               fontsize=7, title="layer", title_fontsize=8, frameon=False)
    fig.suptitle(title + "\nclipping thresholds over epochs", fontsize=9)
    return _save(fig, path)


def best_trial(trials: list[Trial]) -> Trial | None:
    """The finished trial with the best search-metric value at its chosen epoch."""
    scored = [(t.at(t.metric, t.best_epoch), t) for t in trials
              if t.status == "FINISHED" and t.best_epoch is not None]
    if not scored:
        return None
    best = best_of(scored, lambda st: st[0], scored[0][1].mode)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- all

def write_plots(results: ExperimentResults, rows: list[Row], out_dir: str, *,
                run_id: str | None = None, published=None, log: bool = True,
                fmt: str = "png") -> list[tuple[str, list[str]]]:
    """Write every plot that applies into ``out_dir``; log each to the parent run of the
    stages it draws from (unless ``log`` is false). Returns ``[(path, [run ids])]``."""
    os.makedirs(out_dir, exist_ok=True)
    client = results.client
    made: list[tuple[str, list[str]]] = []   # (path, stages)
    stages = list(dict.fromkeys(r.stage for r in rows))
    for stage in stages:
        path = plot_acc_vs_z(rows, stage, os.path.join(out_dir, f"acc_vs_z_{_safe(stage)}.{fmt}"),
                             published)
        if path:
            made.append((path, [stage]))
    path = plot_acc_vs_bits(rows, os.path.join(out_dir, f"acc_vs_bits.{fmt}"), published)
    if path:
        drawn = [r.stage for r in rows if not r.full_precision and r.reported is not None]
        made.append((path, list(dict.fromkeys(drawn))))
    path = plot_pareto(rows, os.path.join(out_dir, f"pareto.{fmt}"))
    if path:
        drawn = [r.stage for r in rows if r.cost and r.reported is not None]
        made.append((path, list(dict.fromkeys(drawn))))

    if run_id:
        trial = next((t for t in results.trials if t.run_id == run_id), None)
        if trial is None:
            raise ReportError(f"--run {run_id}: not a trial run of experiment "
                              f"{results.experiment.name!r}")
        chosen = [trial]
    else:
        chosen = [t for t in (best_trial([t for t in results.trials if t.stage == s])
                              for s in stages) if t is not None]
    for trial in chosen:
        run = client.get_run(trial.run_id)
        stem = f"{_safe(trial.stage)}_{trial.run_id[:8]}"
        alphas, source = read_alphas(client, run)
        path = plot_alphas(alphas, _run_title(trial),
                           os.path.join(out_dir, f"alphas_{stem}.{fmt}"), source)
        if path:
            made.append((path, [trial.stage]))
        path = plot_alpha_trajectories(alpha_history(client, run), _run_title(trial),
                                       os.path.join(out_dir, f"alpha_trajectories_{stem}.{fmt}"))
        if path:
            made.append((path, [trial.stage]))

    out = []
    for path, path_stages in made:
        logged = []
        if log:
            for stage in path_stages:
                stage_run = results.stage_runs.get(stage)
                if stage_run is not None:
                    client.log_artifact(stage_run.info.run_id, path, ARTIFACT_DIR)
                    logged.append(stage_run.info.run_id)
        out.append((path, logged))
    return out
