"""mainrun-report: one self-contained HTML page about a study, plus PNG copies of its plots.

The page works offline: plotly.js is inlined once, there are no web fonts and nothing is fetched.
The plots are Optuna's own (``optuna.visualization`` for the page, ``optuna.visualization.matplotlib``
for the PNGs); this module only restyles them (the baseline and the best trial highlighted, pruned
trials dotted and grey) and adds what Optuna does not draw: the best config, a table of the top
trials and the study's totals, including an estimate of the GPU time that pruning saved.

`build_comparison` compares several studies' search efficiency on one page (compare.html and
compare.png): the best value so far against the device-seconds spent, the best each study had
reached at an equal budget (the smallest total any of them spent), the time pruning saved, and a
verdict in words. `compare_studies` computes those numbers; the page and the PNG only show them.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from .search import DEFAULT_STORAGE, METRIC, SearchError, open_study_readonly, redact, version

# Fewer complete trials than this: no importances (PED-ANOVA compares the top 10% of the complete
# trials with all of them; with a handful of trials that is noise).
MIN_TRIALS_FOR_IMPORTANCE = 5
PLOT_HEIGHT = "520px"
PNG_DPI = 110

# The highlighted trials and the two groups of the intermediate-values plot.
BASELINE_COLOR, BEST_COLOR = "#ff7f0e", "#d62728"
COMPLETE_COLOR, PRUNED_COLOR = "rgba(31, 119, 180, 0.55)", "rgba(128, 128, 128, 0.55)"
MPL_COMPLETE_COLOR, MPL_PRUNED_COLOR = "#1f77b4", "#808080"


# ---------------------------------------------------------------------- numbers
@dataclass
class Totals:
    counts: dict[str, int]
    train_seconds: float = 0.0
    prep_seconds: float = 0.0
    saved_seconds: float = 0.0           # estimated: what the pruned trials would still have needed
    pruned_seconds: float = 0.0          # what the pruned trials did spend (train)
    full_steps: int | None = None
    unit: str = "GPU-seconds"
    wall_seconds: float | None = None
    devices: list[str] = field(default_factory=list)

    @property
    def spent_seconds(self) -> float:
        return self.train_seconds + self.prep_seconds


def compute_totals(trials: list[FrozenTrial]) -> Totals:
    """Trial counts, device time spent (train + prep of every trial that recorded it) and the
    time pruning saved: for each pruned trial, train_seconds * (full_steps / steps - 1), where
    full_steps is the largest `steps` of the complete trials (see `_full_steps` for trials whose
    batch or block size differs from the complete ones')."""
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    totals = Totals(counts=counts)
    for t in trials:
        totals.train_seconds += _num(t.user_attrs.get("train_seconds"))
        totals.prep_seconds += _num(t.user_attrs.get("prep_seconds"))
    devices = sorted({str(t.user_attrs["device"]) for t in trials if "device" in t.user_attrs})
    totals.devices = devices
    kinds = {d.split(":")[0].split(" ")[0] for d in devices}
    totals.unit = "GPU-seconds" if kinds == {"cuda"} else "CPU-seconds" if kinds == {"cpu"} else "device-seconds"

    complete = [t for t in trials if t.state == TrialState.COMPLETE and _num(t.user_attrs.get("steps")) > 0]
    if complete:
        totals.full_steps = int(max(t.user_attrs["steps"] for t in complete))
        for t in trials:
            steps, train = _num(t.user_attrs.get("steps")), _num(t.user_attrs.get("train_seconds"))
            if t.state != TrialState.PRUNED or steps <= 0:
                continue
            totals.pruned_seconds += train
            totals.saved_seconds += train * max(_full_steps(t, complete, totals.full_steps) / steps - 1.0, 0.0)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        totals.wall_seconds = (max(ends) - min(starts)).total_seconds()
    return totals


def _full_steps(trial: FrozenTrial, complete: list[FrozenTrial], default: int) -> float:
    """The steps a full run of `trial` would have taken. Every search space shipped keeps the batch
    and block size fixed, and then this is simply `default`, the most steps of a complete trial.
    If they vary, a complete trial of the same shape says it; failing that, the steps scale
    with epochs / (batch_size * block_size) from the longest complete trial."""
    shape = _shape(trial)
    same = [int(t.user_attrs["steps"]) for t in complete if _shape(t) == shape]
    if same:
        return max(same)
    ref = max(complete, key=lambda t: t.user_attrs["steps"])
    if None in shape or None in _shape(ref):
        return default
    (epochs, batch, block), (r_epochs, r_batch, r_block) = shape, _shape(ref)
    return ref.user_attrs["steps"] * (epochs / r_epochs) * (r_batch * r_block) / (batch * block)


def _shape(trial: FrozenTrial) -> tuple:
    cfg = trial.user_attrs.get("config") or {}
    return cfg.get("epochs"), cfg.get("batch_size"), cfg.get("block_size")


def _num(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def find_baseline(trials: list[FrozenTrial]) -> FrozenTrial | None:
    return next((t for t in trials if t.user_attrs.get("enqueued_as") == "baseline"), None)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:                      # no complete trial yet
        return None


def display_params(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's params as a person reads them: an ordered-values index (head_dim_index,
    beta2_index) is shown as the value it stands for, taken from the trial's config."""
    cfg = trial.user_attrs.get("config") or {}
    shown: dict[str, Any] = {}
    for name, value in trial.params.items():
        base = name[:-len("_index")] if name.endswith("_index") else None
        if base and base in cfg:
            shown[base] = cfg[base]
        elif base == "head_dim" and cfg.get("n_head"):
            shown[base] = cfg["d_model"] // cfg["n_head"]
        else:
            shown[name] = value
    return shown


# ---------------------------------------------------------------------- figures
def _trial_number(name: str | None) -> int | None:
    m = re.fullmatch(r"Trial(\d+)", name or "")
    return int(m.group(1)) if m else None


def _role(trial: FrozenTrial | None, best: FrozenTrial | None, baseline: FrozenTrial | None) -> str:
    if trial is None:
        return "other"
    if best is not None and trial.number == best.number:
        return "best"
    if baseline is not None and trial.number == baseline.number:
        return "baseline"
    return trial.state.name.lower()


def _label(role: str, trial: FrozenTrial, best: FrozenTrial | None, baseline: FrozenTrial | None) -> str:
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    if role == "best":
        also = " = baseline" if baseline is not None and baseline.number == trial.number else ""
        return f"best{also} (trial {trial.number}): {value}"
    if role == "baseline":
        state = "" if trial.state == TrialState.COMPLETE else f", {trial.state.name.lower()}"
        return f"baseline (trial {trial.number}{state}): {value}"
    return {"complete": "complete trials", "pruned": "pruned trials"}.get(role, f"{role} trials")


def intermediate_figure(study: optuna.Study, by_number: dict[int, FrozenTrial],
                        best: FrozenTrial | None, baseline: FrozenTrial | None):
    """optuna.visualization.plot_intermediate_values, restyled: pruned trials dotted grey,
    complete ones thin blue, the baseline and the best trial thick and named in the legend."""
    import optuna.visualization as vis

    fig = vis.plot_intermediate_values(study)
    styles = {
        "best": dict(line=dict(color=BEST_COLOR, width=4), marker=dict(color=BEST_COLOR, size=6)),
        "baseline": dict(line=dict(color=BASELINE_COLOR, width=3.5), marker=dict(color=BASELINE_COLOR, size=6)),
        "complete": dict(line=dict(color=COMPLETE_COLOR, width=1.5), marker=dict(color=COMPLETE_COLOR, size=4)),
        "pruned": dict(line=dict(color=PRUNED_COLOR, width=1.2, dash="dot"), marker=dict(color=PRUNED_COLOR, size=4)),
    }
    order = {"pruned": 0, "running": 0, "other": 0, "complete": 1, "baseline": 2, "best": 3}
    seen: set[str] = set()
    traces = []
    for trace in fig.data:
        trial = by_number.get(_trial_number(trace.name))
        role = _role(trial, best, baseline)
        style = styles.get(role, styles["pruned"])
        trace.update(line=style["line"], marker={**style["marker"], "maxdisplayed": 10}, legendgroup=role,
                     showlegend=role not in seen)
        if trial is not None:
            trace.name = _label(role, trial, best, baseline)
            note = trial.user_attrs.get("prune_reason") or trial.state.name.lower()
            trace.hovertemplate = (f"trial {trial.number} ({html.escape(str(note))})<br>"
                                   "evaluation %{x}<br>val_loss %{y:.4f}<extra></extra>")
        seen.add(role)
        traces.append((order.get(role, 0), trace))
    fig.data = tuple(t for _, t in sorted(traces, key=lambda p: p[0]))   # highlighted lines on top
    fig.update_layout(
        title="Validation loss at each evaluation (all trials)", showlegend=True,
        legend=dict(yanchor="top", y=0.99, xanchor="right", x=0.99, bgcolor="rgba(255,255,255,0.8)"),
        xaxis_title="evaluation (0 = step 1, then 3 per epoch)", yaxis_title=METRIC)
    return fig


def history_figure(study: optuna.Study, baseline: FrozenTrial | None, target_name: str):
    import optuna.visualization as vis

    fig = vis.plot_optimization_history(study, target_name=target_name)
    fig.update_layout(title="Optimisation history (complete trials) and the best value so far")
    if baseline is not None and baseline.value is not None and baseline.state == TrialState.COMPLETE:
        fig.add_hline(y=baseline.value, line=dict(color=BASELINE_COLOR, dash="dash", width=2),
                      annotation_text=f"baseline {baseline.value:.4f}", annotation_position="top right")
    return fig


def importance_figures(study: optuna.Study, n_complete: int, target_name: str, matplotlib: bool = False):
    """(figure, None) or (None, why not)."""
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
                      f"this study has {n_complete}.")
    if matplotlib:
        from optuna.visualization.matplotlib import plot_param_importances
    else:
        from optuna.visualization import plot_param_importances
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                         target_name=target_name)
    except Exception as e:  # an evaluator that cannot cope with this study's trials
        return None, f"Parameter importances could not be computed: {type(e).__name__}: {e}"
    return fig, None


# ---------------------------------------------------------------------- PNG copies
def write_pngs(study: optuna.Study, out: Path, by_number: dict[int, FrozenTrial], best: FrozenTrial | None,
               baseline: FrozenTrial | None, n_complete: int, target_name: str) -> list[Path]:
    """The same plots through optuna.visualization.matplotlib, Agg backend, as PNG files."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the matplotlib plots are flagged experimental
        from optuna.visualization import matplotlib as mvis

        written: list[Path] = []

        def save(ax, name: str, size=(10, 6)) -> None:
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(*size)
            fig.tight_layout()
            path = out / name
            fig.savefig(path, dpi=PNG_DPI)
            plt.close(fig)
            written.append(path)

        if n_complete:
            ax = mvis.plot_optimization_history(study, target_name=target_name)
            ax.set_title("Optimisation history (complete trials) and the best value so far")
            if baseline is not None and baseline.value is not None and baseline.state == TrialState.COMPLETE:
                ax.axhline(baseline.value, color=BASELINE_COLOR, linestyle="--", linewidth=1.5,
                           label=f"baseline {baseline.value:.4f}")
                ax.legend()
            save(ax, "history.png")

        if not any(t.intermediate_values for t in by_number.values()):
            ax = None
        else:
            ax = mvis.plot_intermediate_values(study)
        handles: dict[str, Any] = {}
        for line in ax.get_lines() if ax is not None else ():
            trial = by_number.get(_trial_number(line.get_label()))
            role = _role(trial, best, baseline)
            if role == "best":
                line.set(color=BEST_COLOR, linewidth=3, alpha=1.0, zorder=5)
            elif role == "baseline":
                line.set(color=BASELINE_COLOR, linewidth=2.5, alpha=1.0, zorder=4)
            elif role == "complete":
                line.set(color=MPL_COMPLETE_COLOR, linewidth=1.2, alpha=0.55, zorder=3, markersize=3)
            else:
                line.set(color=MPL_PRUNED_COLOR, linewidth=1.0, alpha=0.55, linestyle=":", zorder=2, markersize=3)
            if trial is not None and role not in handles:
                handles[role] = Line2D([], [], color=line.get_color(), linewidth=line.get_linewidth(),
                                       linestyle=line.get_linestyle(), label=_label(role, trial, best, baseline))
        if ax is not None:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            keep = [handles[r] for r in ("best", "baseline", "complete", "pruned", "running") if r in handles]
            if keep:
                ax.legend(handles=keep, loc="upper right")
            ax.set_title("Validation loss at each evaluation (all trials)")
            ax.set_xlabel("evaluation (0 = step 1, then 3 per epoch)")
            ax.set_ylabel(METRIC)
            save(ax, "intermediate_values.png")

        fig, _ = importance_figures(study, n_complete, target_name, matplotlib=True)
        if fig is not None:
            save(fig, "importances.png", size=(9, 6))

        if n_complete:
            try:
                ax = mvis.plot_parallel_coordinate(study, target_name=target_name)
            except Exception:           # the page says why
                plt.close("all")
            else:
                save(ax, "parallel_coordinate.png", size=(13, 6))
    return written


# ---------------------------------------------------------------------- the page
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1280px; padding: 1rem 2rem 3rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.sub { color: #666; margin-top: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: .8rem; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .6rem .9rem; background: #fafafa; }
.card .v { font-size: 1.45rem; font-weight: 600; } .card .k { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .88rem; width: 100%; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .3rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; } td.l, th.l { text-align: left; }
tr.best td { background: #fde8e8; } tr.baseline td { background: #fff1e0; }
.scroll { overflow-x: auto; } pre { background: #f6f8fa; padding: .8rem 1rem; border-radius: 6px; overflow-x: auto; }
.note { color: #7a5b00; background: #fff8e1; border: 1px solid #f0dc9c; padding: .5rem .8rem; border-radius: 6px; }
.plot { margin: .6rem 0 1.4rem; } code { background: #f2f2f2; padding: 0 .2rem; border-radius: 3px; }
footer { margin-top: 3rem; color: #777; font-size: .85rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count(n: Any) -> str:
    """A parameter count: 27.2M, or 31,012 for a tiny model."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "–"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{int(n):,}"


def _seconds(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def _plot_div(fig, div_id: str) -> str:
    import plotly.io as pio
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, default_height=PLOT_HEIGHT,
                       config={"displaylogo": False, "responsive": True})


def _trial_row(rank: int | str, t: FrozenTrial, columns: list[str], best, baseline) -> str:
    a = t.user_attrs
    params = display_params(t)
    cls = _role(t, best, baseline)
    label = a.get("enqueued_as", "")
    if best is not None and t.number == best.number:
        label = ("best, " + label) if label else "best"
    n_params = a.get("n_params")
    cells = [f"<td>{_e(rank)}</td>", f"<td>{t.number}</td>",
             f"<td>{'' if t.value is None else f'{t.value:.4f}'}</td>", f"<td class='l'>{_e(label)}</td>",
             f"<td>{_num(a.get('train_seconds')):.1f}</td>",
             f"<td>{int(_num(a.get('tokens_per_second'))):,}</td>",
             f"<td>{_num(a.get('peak_memory_mb')):,.0f}</td>",
             f"<td>{_count(n_params)}</td>",
             f"<td>{_e(a.get('steps', '–'))}</td>"]
    cells += [f"<td>{_e(_fmt(params[c])) if c in params else '–'}</td>" for c in columns]
    return f"<tr class='{cls}'>" + "".join(cells) + "</tr>"


def ranked_complete(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=direction == optuna.study.StudyDirection.MAXIMIZE)


def top_trials_table(trials: list[FrozenTrial], direction: optuna.study.StudyDirection, top: int,
                     best, baseline) -> str:
    done = ranked_complete(trials, direction)
    shown_rows = [(i + 1, t) for i, t in enumerate(done[:top])]
    numbers = [t.number for t in done]
    if baseline is not None and baseline.number in numbers[top:]:
        shown_rows.append((numbers.index(baseline.number) + 1, done[numbers.index(baseline.number)]))
    if not shown_rows:
        return "<p class='note'>No complete trial yet.</p>"
    columns: list[str] = []
    for _, t in shown_rows:
        for name in display_params(t):
            if name not in columns:
                columns.append(name)
    head = ("<tr><th>rank</th><th>trial</th><th>" + _e(METRIC) + "</th><th class='l'>label</th>"
            "<th>train s</th><th>tokens/s</th><th>peak MiB</th><th>model params</th><th>steps</th>"
            + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
    rows = "".join(_trial_row(rank, t, columns, best, baseline) for rank, t in shown_rows)
    return f"<div class='scroll'><table>{head}{rows}</table></div>"


def all_trials_table(trials: list[FrozenTrial]) -> str:
    rows = []
    for t in trials:
        a = t.user_attrs
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        value = t.value if t.value is not None else last
        reason = a.get("prune_reason") or a.get("fail_reason") or ""
        rows.append(f"<tr class='{t.state.name.lower()}'><td>{t.number}</td><td class='l'>{t.state.name.lower()}</td>"
                    f"<td>{'' if value is None else f'{value:.4f}'}</td><td>{len(t.intermediate_values)}</td>"
                    f"<td>{_e(a.get('steps', '–'))}</td><td>{_num(a.get('train_seconds')):.1f}</td>"
                    f"<td class='l'>{_e(a.get('enqueued_as', ''))}</td><td class='l'>{_e(reason)}</td></tr>")
    head = ("<tr><th>trial</th><th class='l'>state</th><th>" + _e(METRIC) + " (last)</th><th>evaluations</th>"
            "<th>steps</th><th>train s</th><th class='l'>enqueued as</th><th class='l'>prune / fail reason</th></tr>")
    return f"<div class='scroll'><table>{head}{''.join(rows)}</table></div>"


def totals_cards(totals: Totals, best, baseline) -> str:
    c = totals.counts
    cards = [("trials", sum(c.values())), ("complete", c["complete"]), ("pruned", c["pruned"]),
             ("failed", c["fail"])]
    if c["running"] or c["waiting"]:
        cards.append(("running / waiting", f"{c['running']} / {c['waiting']}"))
    if best is not None:
        cards.append((f"best {METRIC} (trial {best.number})", f"{best.value:.4f}"))
    if baseline is not None and baseline.value is not None and baseline.state == TrialState.COMPLETE:
        cards.append((f"baseline {METRIC} (trial {baseline.number})", f"{baseline.value:.4f}"))
    u = totals.unit
    cards.append((f"{u} spent (train + prep)", f"{totals.spent_seconds:,.0f}"))
    cards.append((f"{u} saved by pruning (estimate)", f"{totals.saved_seconds:,.0f}"))
    if totals.wall_seconds is not None:
        cards.append(("wall clock, first start to last finish", _seconds(totals.wall_seconds)))
    body = "".join(f"<div class='card'><div class='v'>{_e(v)}</div><div class='k'>{_e(k)}</div></div>"
                   for k, v in cards)
    lines = [f"Spent: {totals.spent_seconds:,.0f} {u} = {totals.train_seconds:,.0f} s training + "
             f"{totals.prep_seconds:,.0f} s data preparation, summed over all trials "
             f"(parallel workers count separately; devices: {', '.join(totals.devices) or 'unknown'})."]
    if totals.full_steps:
        whole = totals.spent_seconds + totals.saved_seconds
        would = totals.pruned_seconds + totals.saved_seconds
        lines.append(
            f"Saved by pruning (estimate): {totals.saved_seconds:,.0f} {u}. Each pruned trial's training time is "
            f"scaled up to a full run, <code>train_seconds × (full_steps / steps − 1)</code>, with full_steps the "
            f"most steps of a complete trial ({totals.full_steps:,} here; scaled by batch and block size for a "
            f"trial whose batch or block size differs). The pruned trials trained for "
            f"{totals.pruned_seconds:,.0f} s of the ~{would:,.0f} s full runs would have taken "
            f"({_pct(totals.saved_seconds, would)} saved); without pruning the whole search would have needed "
            f"~{whole:,.0f} {u}; pruning saved {_pct(totals.saved_seconds, whole)} of that.")
    else:
        lines.append("No complete trial records its steps, so the time saved by pruning cannot be estimated.")
    return f"<div class='cards'>{body}</div>" + "".join(f"<p>{line}</p>" for line in lines)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


# ---------------------------------------------------------------------- the report
def build_report(storage_url: str, study_name: str, out_dir: str | Path, top: int = 10) -> Path:
    """Write out_dir/index.html and out_dir/*.png for the study; return the HTML path."""
    study = open_study_readonly(storage_url, study_name)
    if len(study.directions) != 1:
        raise SearchError(f"study '{study_name}' has {len(study.directions)} objectives; the report is for "
                          "single-objective studies such as mainrun-search makes")
    out = output_folder(out_dir)

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    best, baseline = best_trial(study), find_baseline(trials)
    totals = compute_totals(trials)
    n_complete = totals.counts["complete"]
    target_name = study.metric_names[0] if study.metric_names else METRIC

    sections: list[str] = []
    plots: list[tuple[str, str, str | None]] = []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # optuna's "too few trials" and experimental warnings
        if n_complete:
            plots.append(("Optimisation history", _plot_div(history_figure(study, baseline, target_name),
                                                            "plot-history"), None))
        else:
            plots.append(("Optimisation history", "", "No complete trial yet."))
        if any(t.intermediate_values for t in trials):
            plots.append(("Intermediate validation loss", _plot_div(
                intermediate_figure(study, by_number, best, baseline), "plot-intermediate"),
                "Every trial's reported val_loss by evaluation. Pruned trials are dotted grey and end where "
                "the pruner stopped them; the baseline (orange) and the best trial (red) are drawn thick."))
        else:
            plots.append(("Intermediate validation loss", "", "No trial reported intermediate values."))
        fig, why_not = importance_figures(study, n_complete, target_name)
        plots.append(("Parameter importances (PED-ANOVA)", _plot_div(fig, "plot-importance") if fig else "",
                      why_not or "optuna.importance.PedAnovaImportanceEvaluator over the complete trials: how much "
                                 "each parameter's distribution differs between the top 10% and all trials."))
        if n_complete:
            import optuna.visualization as vis
            try:
                div, note = _plot_div(vis.plot_parallel_coordinate(study, target_name=target_name), "plot-parallel"), \
                    "Complete trials; an ordered-values parameter (name_index) is shown as its index."
            except Exception as e:  # e.g. no parameters at all
                div, note = "", f"The parallel-coordinates plot could not be drawn: {type(e).__name__}: {e}"
            plots.append(("Parallel coordinates", div, note))
        pngs = write_pngs(study, out, by_number, best, baseline, n_complete, target_name)

    attrs = study.user_attrs
    storage_flag = "" if storage_url == DEFAULT_STORAGE else f" --storage '{redact(storage_url)}'"
    header = (f"<h1>Study <code>{_e(study.study_name)}</code></h1>"
              f"<p class='sub'>{_e(redact(storage_url))} · space {_e(attrs.get('space_file', '?'))} · dataset "
              f"{_e(attrs.get('dataset', '?'))} · metric {_e(target_name)} ({study.direction.name.lower()})</p>")
    sections.append("<h2>Totals</h2>" + totals_cards(totals, best, baseline))

    if best is not None:
        cfg = best.user_attrs.get("config")
        export = (f"mainrun-export --study {study.study_name}{storage_flag} --out best.yaml && "
                  "mainrun-train --config best.yaml")
        if cfg:
            text = (f"# best trial {best.number} of study '{study.study_name}': {target_name} {best.value:.6f}\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
            sections.append(f"<h2>Best config (trial {best.number}, {target_name} {best.value:.6f})</h2>"
                            f"<pre id='best-config'>{_e(text)}</pre>"
                            f"<p>Export and train it: <code>{_e(export)}</code></p>")
        else:
            sections.append(f"<h2>Best trial {best.number}</h2><p class='note'>It recorded no config.</p>")
    else:
        sections.append("<h2>Best config</h2><p class='note'>No complete trial yet.</p>")

    for title, div, note in plots:
        sections.append(f"<h2>{_e(title)}</h2>" + (f"<p{'' if div else ' class=note'}>{_e(note)}</p>" if note else "")
                        + (f"<div class='plot'>{div}</div>" if div else ""))

    baseline_below = baseline is not None and \
        baseline.number in [t.number for t in ranked_complete(trials, study.direction)[top:]]
    sections.append(f"<h2>Top trials</h2><p>The {min(top, n_complete)} best complete trials"
                    + (" and, below them, the baseline" if baseline_below else "")
                    + ". Ordered-values parameters show the value, not the index.</p>"
                    + top_trials_table(trials, study.direction, top, best, baseline))
    sections.append(f"<h2>All trials</h2><details><summary>{len(trials)} trials</summary>"
                    f"{all_trials_table(trials)}</details>")
    if pngs:
        links = " · ".join(f"<a href='{_e(p.name)}'>{_e(p.name)}</a>" for p in pngs)
        sections.append(f"<p>PNG copies (matplotlib): {links}</p>")

    index = out / "index.html"
    index.write_text(html_page(f"mainrun report: {study.study_name}", header + "".join(sections)), encoding="utf-8")
    return index


def output_folder(out_dir: str | Path) -> Path:
    """The --out folder, created; a file of that name is a SearchError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def html_page(title: str, body: str) -> str:
    """A whole page around `body`: the CSS and plotly.js inlined, a footer; no network needed."""
    from plotly.offline import get_plotlyjs

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + body
            + f"<footer>Made by mainrun-report (mainrun {_e(version())}, optuna {_e(optuna.__version__)}) on {now}. "
              "This page needs no network.</footer></body></html>\n")



# ---------------------------------------------------------------------- comparing studies
# "Reached the best": within this much of the best value any compared study found.
REACH_TOLERANCE = 0.01
# The goal for pruning: save at least this share of the device time, with no worse best.
PRUNING_GOAL = 0.40
# What a space file means when it names no sampler / pruner (space.parse_space's defaults).
DEFAULT_SAMPLER, DEFAULT_PRUNER = "tpe", "median"


@dataclass
class StudyResult:
    """One study's numbers in a comparison. `curve` has one point per finished trial, in order of
    completion: (device-seconds spent so far, best complete value so far or None before the first)."""
    name: str
    sampler: str
    pruner: str
    counts: dict[str, int]
    spent_seconds: float
    saved_seconds: float
    unit: str
    untimed_trials: int
    curve: list[tuple[float, float | None]]
    best_value: float
    unfinished_trials: int = 0           # running or waiting: left out
    best_at_budget: float | None = None
    seconds_to_target: float | None = None

    @property
    def label(self) -> str:
        return f"{self.sampler}+{self.pruner} ({self.name})"

    @property
    def finished(self) -> int:
        return self.counts["complete"] + self.counts["pruned"]

    @property
    def saved_fraction(self) -> float | None:
        whole = self.spent_seconds + self.saved_seconds
        return self.saved_seconds / whole if whole > 0 else None


@dataclass
class Comparison:
    studies: list[StudyResult]
    minimize: bool
    budget_seconds: float                # the equal budget: the smallest total any study spent
    target_value: float                  # the best value any study found
    unit: str
    metric: str = METRIC


def study_policy(attrs: dict[str, Any]) -> tuple[str, str]:
    """(sampler, pruner) names: the study's "sampler"/"pruner" user attrs, else the recorded space
    file's `sampler: {name: ...}` / `pruner: {name: ...}` (defaults tpe / median), else "?"."""
    space = _recorded_space(attrs.get("space_yaml"))
    return (_policy_name(attrs.get("sampler"), space, "sampler", DEFAULT_SAMPLER),
            _policy_name(attrs.get("pruner"), space, "pruner", DEFAULT_PRUNER))


def _recorded_space(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _policy_name(recorded: Any, space: dict | None, key: str, default: str) -> str:
    if isinstance(recorded, dict):
        recorded = recorded.get("name")
    if isinstance(recorded, str) and recorded:
        return recorded
    if space is None:
        return "?"
    policy = space.get(key)
    if policy is None:
        return default
    name = policy.get("name") if isinstance(policy, dict) else None
    return name if isinstance(name, str) and name else "?"


def device_seconds(trial: FrozenTrial) -> float:
    return _num(trial.user_attrs.get("train_seconds")) + _num(trial.user_attrs.get("prep_seconds"))


def is_untimed(trial: FrozenTrial) -> bool:
    return not {"train_seconds", "prep_seconds"} <= trial.user_attrs.keys()


def finished_in_order(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that ended (complete, pruned or failed), in the order they ended: with several
    workers that is not the order of their numbers."""
    ended = [t for t in trials if t.datetime_complete is not None]
    return sorted(ended, key=lambda t: (t.datetime_complete, t.number))


def best_so_far_curve(trials: list[FrozenTrial], minimize: bool) -> list[tuple[float, float | None]]:
    """(cumulative device-seconds, best complete value so far) after each finished trial. Pruned and
    failed trials spend time but set no best: a pruned trial's last value is not a final value."""
    curve: list[tuple[float, float | None]] = []
    spent, best = 0.0, None
    for t in finished_in_order(trials):
        spent += device_seconds(t)
        final = t.value if t.state == TrialState.COMPLETE else None
        if final is not None and (best is None or _better(final, best, minimize)):
            best = final
        curve.append((spent, best))
    return curve


def _better(a: float, b: float, minimize: bool) -> bool:
    return a < b if minimize else a > b


def best_within(curve: list[tuple[float, float | None]], seconds: float) -> float | None:
    """The best value a study had reached once it had spent no more than `seconds`."""
    best = None
    for spent, value in curve:
        if spent > seconds:
            break
        best = value
    return best


def seconds_to_reach(curve: list[tuple[float, float | None]], target: float, minimize: bool,
                     tolerance: float = REACH_TOLERANCE) -> float | None:
    """Device-seconds until the best so far first came within `tolerance` of `target`; None: never."""
    for spent, value in curve:
        if value is not None and (value <= target + tolerance if minimize else value >= target - tolerance):
            return spent
    return None


def summarize_study(name: str, trials: list[FrozenTrial], attrs: dict[str, Any], minimize: bool) -> StudyResult:
    """A study's policy, counts, time spent and saved, and best-so-far curve (no budget yet)."""
    finished = finished_in_order(trials)
    curve = best_so_far_curve(finished, minimize)
    if not curve or curve[-1][1] is None:
        raise SearchError(f"study '{name}' has no complete trial; there is nothing to compare")
    totals = compute_totals(finished)
    sampler, pruner = study_policy(attrs)
    return StudyResult(name=name, sampler=sampler, pruner=pruner, counts=totals.counts,
                       spent_seconds=curve[-1][0], saved_seconds=totals.saved_seconds, unit=totals.unit,
                       untimed_trials=sum(is_untimed(t) for t in finished), curve=curve, best_value=curve[-1][1],
                       unfinished_trials=len(trials) - len(finished))


def refuse_repeated_names(names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SearchError(f"study '{repeated[0]}' is named more than once in --compare")


def compare_studies(studies: list[optuna.Study]) -> Comparison:
    """The comparison's numbers. Pure: it reads only the studies' trials, user attrs and direction."""
    refuse_repeated_names([s.study_name for s in studies])
    if len(studies) < 2:
        raise SearchError("a comparison needs at least 2 studies")
    for s in studies:
        if len(s.directions) != 1:
            raise SearchError(f"study '{s.study_name}' has {len(s.directions)} objectives; "
                              "only single-objective studies can be compared")
    if len({s.direction for s in studies}) != 1:
        raise SearchError("the studies do not all optimise in the same direction: "
                          + ", ".join(f"'{s.study_name}' {s.direction.name.lower()}" for s in studies))
    minimize = studies[0].direction == optuna.study.StudyDirection.MINIMIZE
    results = [summarize_study(s.study_name, s.get_trials(deepcopy=False), s.user_attrs, minimize) for s in studies]
    budget = min(r.spent_seconds for r in results)
    target = (min if minimize else max)(r.best_value for r in results)
    for r in results:
        r.best_at_budget = best_within(r.curve, budget)
        r.seconds_to_target = seconds_to_reach(r.curve, target, minimize)
    units = {r.unit for r in results}
    names = studies[0].metric_names
    return Comparison(studies=results, minimize=minimize, budget_seconds=budget, target_value=target,
                      unit=units.pop() if len(units) == 1 else "device-seconds", metric=names[0] if names else METRIC)


# ---------------------------------------------------------------------- the comparison in words
def _amount(seconds: float) -> str:
    return f"{seconds:,.1f}" if seconds < 100 else f"{seconds:,.0f}"


def _value(value: float | None) -> str:
    return "none yet" if value is None else f"{value:.4f}"


def _leader_at_budget(cmp: Comparison) -> str:
    reached = [r for r in cmp.studies if r.best_at_budget is not None]
    top = (min if cmp.minimize else max)(r.best_at_budget for r in reached)
    leaders = [r.label for r in reached if r.best_at_budget == top]
    return f"{' and '.join(leaders)} {'tie' if len(leaders) > 1 else 'is ahead'}"


def _pruning_sentences(cmp: Comparison) -> list[str]:
    said = []
    for r in cmp.studies:
        if r.pruner == "none":
            said.append(f"{r.label} does not prune.")
        elif r.saved_seconds > 0:
            said.append(f"Pruning saved {_pct(r.saved_seconds, r.spent_seconds + r.saved_seconds)} of "
                        f"{r.label}'s device time (estimate: {_amount(r.saved_seconds)} of "
                        f"{_amount(r.spent_seconds + r.saved_seconds)} {cmp.unit}).")
        else:
            said.append(f"{r.label} saved nothing by pruning ({r.counts['pruned']} pruned trials).")
    return said


def pruning_goal_sentence(cmp: Comparison) -> str | None:
    """The issue's goal, checked for each study with a pruner against those without (pruner none):
    at least PRUNING_GOAL of its device time saved, and a best at equal budget no worse."""
    unpruned = [r for r in cmp.studies if r.pruner == "none"]
    pruned = [r for r in cmp.studies if r.pruner != "none"]
    if not unpruned or not pruned:
        return None
    rival = [r.best_at_budget for r in unpruned if r.best_at_budget is not None]
    rival_best = (min if cmp.minimize else max)(rival) if rival else None
    verdicts = []
    for r in pruned:
        saved_ok = (r.saved_fraction or 0.0) >= PRUNING_GOAL
        best_ok = r.best_at_budget is not None and (rival_best is None or not _better(rival_best, r.best_at_budget,
                                                                                         cmp.minimize))
        missing = [why for ok, why in ((saved_ok, f"saved {_pct(r.saved_seconds, r.spent_seconds + r.saved_seconds)}"),
                                       (best_ok, f"best at equal budget {_value(r.best_at_budget)} vs "
                                                 f"{_value(rival_best)} without pruning")) if not ok]
        verdicts.append(f"{r.label}: {'met' if saved_ok and best_ok else 'not met (' + '; '.join(missing) + ')'}")
    return (f"The goal (pruning saves at least {PRUNING_GOAL:.0%} of the device time with a best no worse than "
            f"without pruning, at equal budget): " + "; ".join(verdicts) + ".")


def verdict(cmp: Comparison) -> str:
    """One paragraph in plain words, computed from the numbers."""
    sense = "lower" if cmp.minimize else "higher"
    at_budget = ", ".join(f"{r.label} {_value(r.best_at_budget)}" for r in cmp.studies)
    parts = [f"At equal budget ({_amount(cmp.budget_seconds)} {cmp.unit}, the smallest total any of these studies "
             f"spent) the best {cmp.metric} reached was: {at_budget} ({sense} is better); "
             f"{_leader_at_budget(cmp)}."]
    parts += _pruning_sentences(cmp)
    goal = pruning_goal_sentence(cmp)
    if goal:
        parts.append(goal)
    return " ".join(parts)


# ---------------------------------------------------------------------- the comparison drawn
def _curve_xy(curve: list[tuple[float, float | None]]) -> tuple[list[float], list[float]]:
    points = [(x, y) for x, y in curve if y is not None]
    return [x for x, _ in points], [y for _, y in points]


def comparison_figure(cmp: Comparison):
    """plotly: each study's best-so-far against cumulative device-seconds, and the equal budget."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in cmp.studies:
        xs, ys = _curve_xy(r.curve)
        hover = f"{_e(r.label)}<br>%{{x:,.1f}} {cmp.unit}<br>best %{{y:.4f}}<extra></extra>"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name=r.label, hovertemplate=hover))
    fig.add_vline(x=cmp.budget_seconds, line=dict(color="#555", dash="dash", width=1.5),
                  annotation_text=f"equal budget {_amount(cmp.budget_seconds)} {cmp.unit}",
                  annotation_position="top right")
    fig.update_layout(title="Best value so far against device time spent", xaxis_title=f"{cmp.unit} spent (cumulative)",
                      yaxis_title=f"best {cmp.metric} so far",
                      legend=dict(yanchor="bottom" if cmp.minimize else "top", y=0.01 if cmp.minimize else 0.99,
                                  xanchor="left", x=0.01, bgcolor="rgba(255,255,255,0.8)"))
    return fig


def write_comparison_png(cmp: Comparison, path: Path) -> Path:
    """The same plot with matplotlib (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    for r in cmp.studies:
        xs, ys = _curve_xy(r.curve)
        ax.plot(xs, ys, drawstyle="steps-post", marker="o", markersize=3, label=r.label)
    ax.axvline(cmp.budget_seconds, color="#555", linestyle="--", linewidth=1.2,
               label=f"equal budget {_amount(cmp.budget_seconds)} {cmp.unit}")
    ax.set(title="Best value so far against device time spent", xlabel=f"{cmp.unit} spent (cumulative)",
           ylabel=f"best {cmp.metric} so far")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=PNG_DPI)
    plt.close(fig)
    return path


def comparison_table(cmp: Comparison) -> str:
    u = cmp.unit
    head = ("<tr><th class='l'>study</th><th class='l'>sampler</th><th class='l'>pruner</th><th>finished</th>"
            f"<th>complete</th><th>pruned</th><th>failed</th><th>{u} spent</th><th>saved by pruning</th>"
            f"<th>saved %</th><th>best</th><th>best at equal budget</th>"
            f"<th>to within {REACH_TOLERANCE:g} of {cmp.target_value:.4f}</th></tr>")
    rows = []
    for r in cmp.studies:
        c = r.counts
        reach = "never" if r.seconds_to_target is None else _amount(r.seconds_to_target)
        rows.append(f"<tr><td class='l'>{_e(r.name)}</td><td class='l'>{_e(r.sampler)}</td>"
                    f"<td class='l'>{_e(r.pruner)}</td><td>{r.finished}</td><td>{c['complete']}</td>"
                    f"<td>{c['pruned']}</td><td>{c['fail']}</td><td>{_amount(r.spent_seconds)}</td>"
                    f"<td>{_amount(r.saved_seconds)}</td>"
                    f"<td>{_pct(r.saved_seconds, r.spent_seconds + r.saved_seconds)}</td>"
                    f"<td>{r.best_value:.4f}</td><td>{_value(r.best_at_budget)}</td><td>{reach}</td></tr>")
    return f"<div class='scroll'><table id='comparison'>{head}{''.join(rows)}</table></div>"


def comparison_notes(cmp: Comparison) -> str:
    notes = [f"Times are in {cmp.unit}. A trial's device time is its <code>train_seconds + prep_seconds</code>; "
             "trials are taken in the order they finished, and only complete trials can set a new best. Saved % is "
             "the time saved by pruning over spent + saved; it is estimated as in the single-study report (each "
             "pruned trial's training time scaled up to a full run). The last column is the time a study spent "
             f"until its best came within {REACH_TOLERANCE:g} of the best value any compared study found."]
    for r in cmp.studies:
        if r.untimed_trials:
            notes.append(f"{_e(r.label)}: {r.untimed_trials} finished trial(s) recorded no train_seconds or "
                         "prep_seconds (a duplicate suggestion, a failure, an older mainrun); they count as 0.")
        if r.unfinished_trials:
            notes.append(f"{_e(r.label)}: {r.unfinished_trials} trial(s) had not finished yet and are left out.")
        if "?" in (r.sampler, r.pruner):
            notes.append(f"{_e(r.label)}: the study does not record its sampler or pruner.")
    return "".join(f"<p>{n}</p>" for n in notes)


def build_comparison(storage_url: str, study_names: list[str], out_dir: str | Path) -> Path:
    """Write out_dir/compare.html and out_dir/compare.png comparing the studies; return the HTML path."""
    refuse_repeated_names(study_names)
    cmp = compare_studies([open_study_readonly(storage_url, name) for name in study_names])
    out = output_folder(out_dir)
    png = write_comparison_png(cmp, out / "compare.png")
    names = ", ".join(r.name for r in cmp.studies)
    body = (f"<h1>Search efficiency: {_e(names)}</h1>"
            f"<p class='sub'>{_e(redact(storage_url))} · metric {_e(cmp.metric)} "
            f"({'minimize' if cmp.minimize else 'maximize'})</p>"
            f"<h2>Verdict</h2><p id='verdict'>{_e(verdict(cmp))}</p>"
            "<h2>Best value against device time</h2>"
            f"<div class='plot'>{_plot_div(comparison_figure(cmp), 'plot-compare')}</div>"
            f"<h2>Numbers</h2>{comparison_table(cmp)}{comparison_notes(cmp)}"
            f"<p>PNG copy (matplotlib): <a href='{_e(png.name)}'>{_e(png.name)}</a></p>")
    page = out / "compare.html"
    page.write_text(html_page(f"mainrun comparison: {names}", body), encoding="utf-8")
    return page


__all__ = ["build_comparison", "build_report", "compare_studies", "compute_totals", "open_study_readonly"]
