"""mainrun-report: one self-contained HTML page about a study, plus PNG copies of its plots.

The page works offline: plotly.js is inlined once, there are no web fonts and nothing is fetched.
The plots are Optuna's own (``optuna.visualization`` for the page, ``optuna.visualization.matplotlib``
for the PNGs); this module only restyles them (the baseline and the best trial highlighted, pruned
trials dotted and grey) and adds what Optuna does not draw: the best config, a table of the top
trials and the study's totals, including an estimate of the GPU time that pruning saved.
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

from . import __version__
from .config import is_number
from .errors import SearchError
from .export import export_command
from .search.study import METRIC, display_params
from .storage import open_study_readonly, redact

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
    unestimated: int = 0                  # pruned trials whose full run's length is not known
    unit: str = "GPU-seconds"
    wall_seconds: float | None = None
    devices: list[str] = field(default_factory=list)

    @property
    def spent_seconds(self) -> float:
        return self.train_seconds + self.prep_seconds


def compute_totals(trials: list[FrozenTrial]) -> Totals:
    """Trial counts, device time spent (train + prep of every trial that recorded it) and the
    time pruning saved: for each pruned trial, what its full run would still have needed
    (`_saved_seconds`)."""
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    totals = Totals(counts=counts)
    for t in trials:
        totals.train_seconds += as_number(t.user_attrs.get("train_seconds"))
        totals.prep_seconds += as_number(t.user_attrs.get("prep_seconds"))
    devices = sorted({str(t.user_attrs["device"]) for t in trials if "device" in t.user_attrs})
    totals.devices = devices
    kinds = {d.split(":")[0].split(" ")[0] for d in devices}
    totals.unit = "GPU-seconds" if kinds == {"cuda"} else "CPU-seconds" if kinds == {"cpu"} else "device-seconds"

    complete = [t for t in trials if t.state == TrialState.COMPLETE and as_number(t.user_attrs.get("steps")) > 0]
    longest = int(max(t.user_attrs["steps"] for t in complete)) if complete else 0
    for t in trials:
        if t.state != TrialState.PRUNED or as_number(t.user_attrs.get("steps")) <= 0:
            continue
        full = as_number(t.user_attrs.get("max_steps")) or (
            _full_steps(t, complete, longest) if complete else 0)
        if not full:
            totals.unestimated += 1
            continue
        totals.pruned_seconds += as_number(t.user_attrs.get("train_seconds"))
        totals.saved_seconds += _saved_seconds(t, full)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        totals.wall_seconds = (max(ends) - min(starts)).total_seconds()
    return totals


def _saved_seconds(trial: FrozenTrial, full_steps: float) -> float:
    """What the rest of a pruned trial's run would have taken. Its setup (the optimizer, graph
    capture or compilation, step 1 and its scoring) is paid once, so only the time after it
    scales with the steps not run: (train - setup) / (steps - 1) * (full_steps - steps). A
    trial recorded without setup_seconds scales all of it: train * (full_steps / steps - 1)."""
    steps, train = as_number(trial.user_attrs.get("steps")), as_number(trial.user_attrs.get("train_seconds"))
    setup = as_number(trial.user_attrs.get("setup_seconds"))
    if steps > 1 and 0 < setup < train:
        return max((train - setup) / (steps - 1) * (full_steps - steps), 0.0)
    return train * max(full_steps / steps - 1.0, 0.0)


def _full_steps(trial: FrozenTrial, complete: list[FrozenTrial], default: int) -> float:
    """The steps a full run of `trial` would have taken, for a trial recorded without max_steps.
    Every search space shipped keeps the batch and block size fixed, and then this is simply
    `default`, the most steps of a complete trial. If they vary, a complete trial of the same
    shape says it; failing that, the steps scale with epochs / (batch_size * block_size) from the
    longest complete trial."""
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


def as_number(value: Any) -> float:
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

        if not has_curves(by_number.values()):
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


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count(n: Any) -> str:
    """A parameter count: 27.2M, or 31,012 for a tiny model."""
    if not is_number(n):
        return "–"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{int(n):,}"


def _megabytes(mb: Any) -> str:
    """A peak-memory cell: measured on CUDA only, so a CPU trial has none."""
    if not is_number(mb):
        return "–"
    return f"{mb:,.0f}"


def _seconds(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def plot_div(fig, div_id: str) -> str:
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
    cells = [f"<td>{escape(rank)}</td>", f"<td>{t.number}</td>",
             f"<td>{'' if t.value is None else f'{t.value:.4f}'}</td>", f"<td class='l'>{escape(label)}</td>",
             f"<td>{as_number(a.get('train_seconds')):.1f}</td>",
             f"<td>{int(as_number(a.get('tokens_per_second'))):,}</td>",
             f"<td>{_megabytes(a.get('peak_memory_mb'))}</td>",
             f"<td>{_count(n_params)}</td>",
             f"<td>{escape(a.get('steps', '–'))}</td>"]
    cells += [f"<td>{escape(_fmt(params[c])) if c in params else '–'}</td>" for c in columns]
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
    head = ("<tr><th>rank</th><th>trial</th><th>" + escape(METRIC) + "</th><th class='l'>label</th>"
            "<th>train s</th><th>tokens/s</th><th>peak MiB</th><th>model params</th><th>steps</th>"
            + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr>")
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
                    f"<td>{escape(a.get('steps', '–'))}</td><td>{as_number(a.get('train_seconds')):.1f}</td>"
                    f"<td class='l'>{escape(a.get('enqueued_as', ''))}</td><td class='l'>{escape(reason)}</td></tr>")
    head = ("<tr><th>trial</th><th class='l'>state</th><th>" + escape(METRIC) + " (last)</th><th>evaluations</th>"
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
    unknown = totals.counts["pruned"] and totals.unestimated == totals.counts["pruned"]
    cards.append((f"{u} saved by pruning (estimate)", "–" if unknown else f"{totals.saved_seconds:,.0f}"))
    if totals.wall_seconds is not None:
        cards.append(("wall clock, first start to last finish", _seconds(totals.wall_seconds)))
    body = "".join(f"<div class='card'><div class='v'>{escape(v)}</div><div class='k'>{escape(k)}</div></div>"
                   for k, v in cards)
    lines = [f"Spent: {totals.spent_seconds:,.0f} {u} = {totals.train_seconds:,.0f} s training + "
             f"{totals.prep_seconds:,.0f} s data preparation, summed over all trials "
             f"(parallel workers count separately; devices: {', '.join(totals.devices) or 'unknown'})."]
    if totals.counts["fail"]:
        lines.append(f"{totals.counts['fail']} failed trial(s) (interrupted, out of memory, refused, ...) record no "
                     "time and count as 0 here.")
    if not totals.counts["pruned"]:
        lines.append("No trial was pruned, so pruning saved nothing.")
    elif unknown:
        lines.append("No pruned trial records how many steps its full run has, and no complete trial says it, "
                     "so the time saved by pruning cannot be estimated.")
    else:
        whole = totals.spent_seconds + totals.saved_seconds
        would = totals.pruned_seconds + totals.saved_seconds
        lines.append(
            f"Saved by pruning (estimate): {totals.saved_seconds:,.0f} {u}. For each pruned trial, the time per "
            f"step after its setup (optimizer, graph capture or compilation, step 1 and its scoring, paid once) "
            f"times the steps it did not run, <code>(train_seconds − setup_seconds) / (steps − 1) × (max_steps − "
            f"steps)</code>; for a trial recorded without setup_seconds, <code>train_seconds × (max_steps / steps − "
            f"1)</code>. The pruned trials trained for {totals.pruned_seconds:,.0f} s of the ~{would:,.0f} s "
            f"their full runs would have taken ({percent(totals.saved_seconds, would)} saved); without pruning the "
            f"whole search would have needed ~{whole:,.0f} {u}; pruning saved {percent(totals.saved_seconds, whole)} "
            "of that.")
        if totals.unestimated:
            lines.append(f"{totals.unestimated} pruned trial(s) record neither their full run's steps nor a "
                         "complete trial of their shape, and are left out of the estimate.")
    return f"<div class='cards'>{body}</div>" + "".join(f"<p>{line}</p>" for line in lines)


def percent(part: float, whole: float) -> str:
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
            plots.append(("Optimisation history", plot_div(history_figure(study, baseline, target_name),
                                                            "plot-history"), None))
        else:
            plots.append(("Optimisation history", "", "No complete trial yet."))
        if has_curves(trials):
            plots.append(("Intermediate validation loss", plot_div(
                intermediate_figure(study, by_number, best, baseline), "plot-intermediate"),
                "Every trial's reported val_loss by evaluation. Pruned trials are dotted grey and end where "
                "the pruner stopped them; the baseline (orange) and the best trial (red) are drawn thick."))
        else:
            plots.append(("Intermediate validation loss", "", "No complete, pruned or running trial reported "
                          "intermediate values (failed trials are not drawn)."))
        fig, why_not = importance_figures(study, n_complete, target_name)
        plots.append(("Parameter importances (PED-ANOVA)", plot_div(fig, "plot-importance") if fig else "",
                      why_not or "optuna.importance.PedAnovaImportanceEvaluator over the complete trials: how much "
                                 "each parameter's distribution differs between the top 10% and all trials."))
        if n_complete:
            import optuna.visualization as vis
            try:
                div, note = plot_div(vis.plot_parallel_coordinate(study, target_name=target_name), "plot-parallel"), \
                    "Complete trials; an ordered-values parameter (name_index) is shown as its index."
            except Exception as e:  # e.g. no parameters at all
                div, note = "", f"The parallel-coordinates plot could not be drawn: {type(e).__name__}: {e}"
            plots.append(("Parallel coordinates", div, note))
        pngs = write_pngs(study, out, by_number, best, baseline, n_complete, target_name)

    attrs = study.user_attrs
    header = (f"<h1>Study <code>{escape(study.study_name)}</code></h1>"
              f"<p class='sub'>{escape(redact(storage_url))} · space {escape(attrs.get('space_file', '?'))} · dataset "
              f"{escape(attrs.get('dataset', '?'))} · metric {escape(target_name)} ({study.direction.name.lower()})</p>")
    sections.append("<h2>Totals</h2>" + totals_cards(totals, best, baseline))

    if best is not None:
        cfg = best.user_attrs.get("config")
        export = export_command(storage_url, study.study_name)
        if cfg:
            text = (f"# best trial {best.number} of study '{study.study_name}': {target_name} {best.value:.6f}\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
            sections.append(f"<h2>Best config (trial {best.number}, {target_name} {best.value:.6f})</h2>"
                            f"<pre id='best-config'>{escape(text)}</pre>"
                            f"<p>Export and train it: <code>{escape(export)}</code></p>")
        else:
            sections.append(f"<h2>Best trial {best.number}</h2><p class='note'>It recorded no config.</p>")
    else:
        sections.append("<h2>Best config</h2><p class='note'>No complete trial yet.</p>")

    for title, div, note in plots:
        sections.append(f"<h2>{escape(title)}</h2>" + (f"<p{'' if div else ' class=note'}>{escape(note)}</p>" if note else "")
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
        links = " · ".join(f"<a href='{escape(p.name)}'>{escape(p.name)}</a>" for p in pngs)
        sections.append(f"<p>PNG copies (matplotlib): {links}</p>")

    index = out / "index.html"
    index.write_text(html_page(f"mainrun report: {study.study_name}", header + "".join(sections)), encoding="utf-8")
    return index


def output_folder(out_dir: str | Path) -> Path:
    """The --out folder, created; a file of that name, or a folder that cannot be made, is a
    SearchError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return out


def has_curves(trials) -> bool:
    """Whether Optuna's intermediate-values plot has anything to draw: it leaves failed trials out."""
    drawn = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return any(t.intermediate_values for t in trials if t.state in drawn)


def html_page(title: str, body: str) -> str:
    """A whole page around `body`: the CSS and plotly.js inlined, a footer; no network needed."""
    from plotly.offline import get_plotlyjs

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + body
            + f"<footer>Made by mainrun-report (mainrun {escape(__version__)}, optuna {escape(optuna.__version__)}) on {now}. "
              "This page needs no network.</footer></body></html>\n")


__all__ = ["build_report", "compute_totals", "html_page", "open_study_readonly", "output_folder"]
