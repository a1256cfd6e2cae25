"""mainrun-report: one self-contained HTML page about a study, plus PNG copies of its plots.

The page works offline: plotly.js is inlined once, there are no web fonts and nothing is fetched.
The plots are Optuna's own (``optuna.visualization`` for the page, ``optuna.visualization.matplotlib``
for the PNGs); this module only restyles them (the baseline and the best trial highlighted, pruned
trials dotted and grey) and adds what Optuna does not draw: the best config, a table of the top
trials and the study's totals, including an estimate of the GPU time that pruning saved.
"""
from __future__ import annotations

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

from .commands import export_command
from .confirm.figures import confirmed_section, study_confirmation
from .curves import curves_figure, trial_curves, write_curves_png
from .edges import recorded_space_edges
from .errors import SearchError
from .formats import duration
from .pages import PNG_DPI, output_folder, plot_div, render_page
from .search.study import METRIC, best_trial, display_params
from .storage import open_study_readonly, redact

# Fewer complete trials than this: no importances (PED-ANOVA compares the top 10% of the complete
# trials with all of them; with a handful of trials that is noise).
MIN_TRIALS_FOR_IMPORTANCE = 5

# The highlighted trials and the two groups of the intermediate-values plot.
BASELINE_COLOR, BEST_COLOR = "#ff7f0e", "#d62728"
COMPLETE_COLOR, PRUNED_COLOR = "rgba(31, 119, 180, 0.55)", "rgba(128, 128, 128, 0.55)"
MPL_COMPLETE_COLOR, MPL_PRUNED_COLOR = "#1f77b4", "#808080"
EXTRA_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf")     # --trial N curves


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

    @property
    def saving_unknown(self) -> bool:
        """Every pruned trial lacks what its full run's length would have been."""
        return bool(self.counts["pruned"]) and self.unestimated == self.counts["pruned"]


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


def curve_runs(by_number: dict[int, FrozenTrial], best: FrozenTrial | None, baseline: FrozenTrial | None,
               extra: list[int]) -> tuple[list[tuple[str, dict, str]], list[str]]:
    """(label, curves, colour) of the best trial, the baseline and the `extra` trials that
    recorded curves, and a note for each asked-for trial that did not."""
    wanted = [(best, "best", BEST_COLOR), (baseline, "baseline", BASELINE_COLOR)]
    wanted += [(by_number.get(n), None, EXTRA_COLORS[i % len(EXTRA_COLORS)]) for i, n in enumerate(extra)]
    runs, missing, seen = [], [], set()
    for trial, role, color in wanted:
        if trial is None or trial.number in seen:
            continue
        seen.add(trial.number)
        label = f"{role} (trial {trial.number})" if role else f"trial {trial.number}"
        curves = trial_curves(trial.user_attrs)
        if curves is None:
            missing.append(f"{label} recorded no training curves (made by an older mainrun, or it never trained).")
        else:
            runs.append((label, curves, color))
    return runs, missing


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
def top_rows(trials: list[FrozenTrial], direction: optuna.study.StudyDirection, top: int,
             best: FrozenTrial | None, baseline: FrozenTrial | None) -> list[dict[str, Any]]:
    """The top-trials table: the `top` best complete trials, and the baseline below them if it
    ranks lower."""
    done = ranked_complete(trials, direction)
    shown = [(i + 1, t) for i, t in enumerate(done[:top])]
    numbers = [t.number for t in done]
    if baseline is not None and baseline.number in numbers[top:]:
        shown.append((numbers.index(baseline.number) + 1, done[numbers.index(baseline.number)]))
    rows = []
    for rank, t in shown:
        label = t.user_attrs.get("enqueued_as", "")
        if best is not None and t.number == best.number:
            label = ("best, " + label) if label else "best"
        rows.append({"rank": rank, "trial": t, "role": _role(t, best, baseline), "label": label,
                     "train_seconds": as_number(t.user_attrs.get("train_seconds")),
                     "tokens_per_second": int(as_number(t.user_attrs.get("tokens_per_second"))),
                     "params": display_params(t)})
    return rows


def ranked_complete(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=direction == optuna.study.StudyDirection.MAXIMIZE)


def all_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """The all-trials table: a pruned or failed trial shows its last reported value."""
    rows = []
    for t in trials:
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t, "state": t.state.name.lower(), "value": t.value if t.value is not None else last,
                     "train_seconds": as_number(t.user_attrs.get("train_seconds")),
                     "reason": t.user_attrs.get("prune_reason") or t.user_attrs.get("fail_reason") or ""})
    return rows


def totals_cards(totals: Totals, best: FrozenTrial | None, baseline: FrozenTrial | None) -> list[tuple[str, Any]]:
    """(what, value) for each card of the totals."""
    c = totals.counts
    cards: list[tuple[str, Any]] = [("trials", sum(c.values())), ("complete", c["complete"]),
                                    ("pruned", c["pruned"]), ("failed", c["fail"])]
    if c["running"] or c["waiting"]:
        cards.append(("running / waiting", f"{c['running']} / {c['waiting']}"))
    if best is not None:
        cards.append((f"best {METRIC} (trial {best.number})", f"{best.value:.4f}"))
    if baseline is not None and baseline.value is not None and baseline.state == TrialState.COMPLETE:
        cards.append((f"baseline {METRIC} (trial {baseline.number})", f"{baseline.value:.4f}"))
    u = totals.unit
    cards.append((f"{u} spent (train + prep)", f"{totals.spent_seconds:,.0f}"))
    cards.append((f"{u} saved by pruning (estimate)", "–" if totals.saving_unknown else f"{totals.saved_seconds:,.0f}"))
    if totals.wall_seconds is not None:
        cards.append(("wall clock, first start to last finish", duration(totals.wall_seconds)))
    return cards


def has_curves(trials) -> bool:
    """Whether Optuna's intermediate-values plot has anything to draw: it leaves failed trials out."""
    drawn = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return any(t.intermediate_values for t in trials if t.state in drawn)


# ---------------------------------------------------------------------- the report
def build_report(storage_url: str, study_name: str, out_dir: str | Path, top: int = 10,
                 curve_trials: list[int] = (), against: str | None = None) -> Path:
    """Write out_dir/index.html and out_dir/*.png for the study; return the HTML path. The
    training curves show the best trial, the baseline and the `curve_trials`; `against` names
    an ablation's base for the Confirmed section's comparisons."""
    study = open_study_readonly(storage_url, study_name)
    if len(study.directions) != 1:
        raise SearchError(f"study '{study_name}' has {len(study.directions)} objectives; the report is for "
                          "single-objective studies such as mainrun-search makes")

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    best, baseline = best_trial(study), find_baseline(trials)
    totals = compute_totals(trials)
    n_complete = totals.counts["complete"]
    target_name = study.metric_names[0] if study.metric_names else METRIC

    unknown = [n for n in curve_trials if n not in by_number]
    if unknown:
        raise SearchError(f"--trial {unknown[0]}: study '{study_name}' has no such trial "
                          f"(trials 0 to {len(trials) - 1})")
    confirmation = study_confirmation(study, against)     # read before writing: a bad --against writes nothing
    out = output_folder(out_dir)                   # only now: a refused report writes nothing
    runs, no_curves = curve_runs(by_number, best, baseline, list(curve_trials))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # optuna's "too few trials" and experimental warnings
        plots = _plots(study, trials, by_number, best, baseline, n_complete, target_name)
        pngs = write_pngs(study, out, by_number, best, baseline, n_complete, target_name)
        confirmed = confirmed_section(confirmation, out)      # None: the study has no confirmation
    if runs:
        plots.insert(2, ("Training curves", plot_div(curves_figure(runs), "plot-curves"),
                         "Against the training step: the training loss (per token, the mean over each read of "
                         "the loss buffer), the validation loss (per character, at each evaluation) and the "
                         "learning rate. " + " ".join(no_curves)))
        pngs.append(write_curves_png(runs, out / "curves.png", dpi=PNG_DPI, size=(10, 8)))
    else:
        plots.insert(2, ("Training curves", "", " ".join(no_curves) or "No trial to show."))
    if confirmed:
        pngs.append(confirmed["png"])

    best_yaml = None
    if best is not None and best.user_attrs.get("config"):
        best_yaml = (f"# best trial {best.number} of study '{study.study_name}': {target_name} {best.value:.6f}\n"
                     + yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
    rows = top_rows(trials, study.direction, top, best, baseline)
    columns = list(dict.fromkeys(name for row in rows for name in row["params"]))
    index = out / "index.html"
    index.write_text(render_page(
        "report.html.j2", f"mainrun report: {study.study_name}", study=study, storage=redact(storage_url),
        metric=METRIC, target_name=target_name, totals=totals, cards=totals_cards(totals, best, baseline),
        best=best, best_yaml=best_yaml, export=export_command(storage_url, study.study_name), plots=plots,
        edges=recorded_space_edges(study, confirmed["confirmation"].best.finalist.trial if confirmed else best),
        edges_of="the confirmed best (best mean)" if confirmed else "the best trial",
        shown=min(top, n_complete), baseline_below=any(row["rank"] > top for row in rows), top_rows=rows,
        columns=columns, all_rows=all_rows(trials), pngs=pngs, confirmed=confirmed,
        export_confirmed=export_command(storage_url, study.study_name, confirmed=True)), encoding="utf-8")
    return index


def _plots(study: optuna.Study, trials: list[FrozenTrial], by_number: dict[int, FrozenTrial],
           best: FrozenTrial | None, baseline: FrozenTrial | None, n_complete: int,
           target_name: str) -> list[tuple[str, Any, str | None]]:
    """(title, plot div or "", note) for each plot of the page."""
    plots: list[tuple[str, Any, str | None]] = []
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
    return plots


__all__ = ["build_report", "compute_totals", "output_folder"]
