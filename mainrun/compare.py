"""mainrun-report --compare: the search efficiency of several studies on one page.

compare.html (offline, like the study report) and compare.png show each study's best value so
far against the device-seconds it spent, the best each had reached at an equal budget (the
smallest total any of them spent), the time pruning saved, and a verdict in words. Studies of
one policy (sampler and pruner, options included) are repeated searches: the verdict compares
policies by the spread of their searches, and says how many searches each number rests on.
`compare_studies` computes those numbers; the page and the PNG only show them.
"""
from __future__ import annotations

import html
import inspect
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import parse_yaml_text
from .errors import ConfigError, SearchError
from .formats import metric_value, percent, seconds_amount
from .pages import PNG_DPI, output_folder, plot_div, render_page
from .policy import DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS
from .report import as_number, compute_totals
from .search.study import METRIC
from .storage import open_study_readonly, redact


# "Reached the best": within this much of the best value any compared study found.
REACH_TOLERANCE = 0.01
# The goal for pruning: save at least this share of the device time, with no worse best.
PRUNING_GOAL = 0.40


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
    policy: str = ""                     # sampler+pruner with their options: what repeated searches share
    devices: list[str] = field(default_factory=list)    # as its finished trials recorded them

    @property
    def label(self) -> str:
        return f"{self.sampler}+{self.pruner} ({self.name})"

    @property
    def finished(self) -> int:
        return self.counts["complete"] + self.counts["pruned"]

    @property
    def unpruned_seconds(self) -> float:
        """What the study would have spent without pruning (estimate)."""
        return self.spent_seconds + self.saved_seconds

    @property
    def saved_fraction(self) -> float | None:
        return self.saved_seconds / self.unpruned_seconds if self.unpruned_seconds > 0 else None


@dataclass
class PolicyGroup:
    """The compared studies of one policy: repeated searches, whose bests at the equal budget
    spread as much as luck (which trials a seed or a worker's timing draws) makes them."""
    policy: str
    studies: list[StudyResult]

    @property
    def values(self) -> list[float]:
        return [r.best_at_budget for r in self.studies if r.best_at_budget is not None]

    @property
    def searches(self) -> str:
        return f"{len(self.studies)} search{'es' if len(self.studies) > 1 else ''}"

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None


@dataclass
class Comparison:
    studies: list[StudyResult]
    minimize: bool
    budget_seconds: float                # the equal budget: the smallest total any study spent
    target_value: float                  # the best value any study found
    unit: str
    metric: str = METRIC
    caveats: list[str] = field(default_factory=list)   # why the values may not compare
    groups: list[PolicyGroup] = field(default_factory=list)   # by policy, in the order first compared

    @property
    def repeated(self) -> bool:
        """Whether some policy was searched more than once: the verdict is then by policy."""
        return any(len(g.studies) > 1 for g in self.groups)


# (user attr / space key, the names it may take with mainrun's defaults, the space's default)
POLICY_KINDS = (("sampler", SAMPLERS, DEFAULT_SAMPLER), ("pruner", PRUNERS, DEFAULT_PRUNER))


def study_policy(attrs: dict[str, Any]) -> tuple[str, str]:
    """(sampler, pruner) names: the study's "sampler"/"pruner" user attrs, else the recorded space
    file's `sampler: {name: ...}` / `pruner: {name: ...}` (defaults tpe / median), else "?"."""
    space = _recorded_space(attrs.get("space_yaml"))
    sampler, pruner = (_policy_name(attrs.get(key), space, key, default) for key, _, default in POLICY_KINDS)
    return sampler, pruner


def policy_label(attrs: dict[str, Any]) -> str:
    """sampler+pruner, each with the options that differ from mainrun's defaults, e.g.
    "tpe+median(n_warmup_steps=6)": the study's recorded "policy" attr, else (an older study) its
    recorded space file's options where that names the recorded sampler or pruner."""
    recorded = attrs.get("policy") if isinstance(attrs.get("policy"), dict) else {}
    space = _recorded_space(attrs.get("space_yaml"))
    parts = []
    for key, table, default in POLICY_KINDS:
        name = _policy_name(attrs.get(key), space, key, default)
        spec = recorded.get(key, (space or {}).get(key))
        spec_name = spec.get("name", default) if isinstance(spec, dict) else None
        parts.append(name + (_options_text(table, name, spec) if spec_name == name else ""))
    return "+".join(parts)


def _options_text(table: dict, name: str, spec: dict) -> str:
    if name not in table:
        return ""
    cls, ours = table[name]
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()} | ours
    changed = {k: v for k, v in spec.items() if k != "name" and defaults.get(k, inspect.Parameter.empty) != v}
    return f"({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else ""


def _recorded_space(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        data = parse_yaml_text(text, "the study's recorded space")
    except ConfigError:
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
    return as_number(trial.user_attrs.get("train_seconds")) + as_number(trial.user_attrs.get("prep_seconds"))


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
                       unfinished_trials=len(trials) - len(finished), policy=policy_label(attrs),
                       devices=totals.devices)


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
    name_spaces(results, [s.user_attrs for s in studies])
    groups: dict[str, PolicyGroup] = {}
    for r in results:
        groups.setdefault(r.policy, PolicyGroup(r.policy, [])).studies.append(r)
    return Comparison(studies=results, minimize=minimize, budget_seconds=budget, target_value=target,
                      unit=units.pop() if len(units) == 1 else "device-seconds", metric=names[0] if names else METRIC,
                      caveats=caveats(studies, results), groups=list(groups.values()))


def _space_signature(attrs: dict[str, Any]) -> str | None:
    """What the study searched: its recorded space's params and fixed fields (not its policy,
    its enqueued configs or its comments). None: no readable recorded space."""
    space = _recorded_space(attrs.get("space_yaml"))
    if space is None:
        return None
    return json.dumps({"params": space.get("params"), "fixed": space.get("fixed")}, sort_keys=True, default=str)


def name_spaces(results: list[StudyResult], attrs: list[dict[str, Any]]) -> None:
    """Searches of one policy in different spaces are not repeats of one another: where the
    compared studies searched more than one space, each policy gets its space's file name
    ("tpe+median on arch"; numbered where two different spaces share a name)."""
    signatures = [_space_signature(a) for a in attrs]
    if len(set(signatures)) < 2:
        return
    stems = {sig: Path(str(a.get("space_file") or "unknown space")).stem for sig, a in zip(signatures, attrs)}
    spaces_named = {stem: [sig for sig in stems if stems[sig] == stem] for stem in stems.values()}
    for r, sig in zip(results, signatures):
        named = spaces_named[stems[sig]]
        r.policy += f" on {stems[sig]}" + (f" #{named.index(sig) + 1}" if len(named) > 1 else "")


def caveats(studies: list[optuna.Study], results: list[StudyResult]) -> list[str]:
    """What makes the studies incomparable: other data, or spaces that fix different run fields
    (epochs, scoring geometry, ...), for their values; other devices (GPU model, precision), for
    their device time, the budget the comparison is made at. Different params or policies are
    what a comparison is for, so they are not caveats."""
    said = []
    titles = {s.study_name: s.user_attrs.get("titles_sha256") for s in studies}
    if len({t for t in titles.values() if t}) > 1:
        said.append("The studies ran on different data (their titles_sha256 differ), so their values do not compare.")
    fixed = {s.study_name: (_recorded_space(s.user_attrs.get("space_yaml")) or {}).get("fixed") or {}
             for s in studies}
    keys = sorted({k for f in fixed.values() for k in f}, key=str)
    differ = [k for k in keys if len({repr(f.get(k)) for f in fixed.values()}) > 1]
    if differ:
        k = differ[0]
        values = ", ".join(f"'{name}' {f.get(k, '(default)')!r}" for name, f in fixed.items())
        said.append(f"The studies' spaces fix different run fields ({', '.join(map(str, differ))}; {k}: {values}), "
                    "so their values may not compare.")
    # without the GPU index: the machine's other GPU of the same model trains at the same speed
    devices = {r.name: {re.sub(r"^(\w+):\d+", r"\1", d) for d in r.devices} for r in results}
    if len({frozenset(d) for d in devices.values() if d}) > 1:
        values = "; ".join(f"'{name}' {', '.join(sorted(d))}" for name, d in devices.items() if d)
        said.append(f"The studies trained on different devices ({values}), so their device time, the budget "
                    "they are compared at, does not compare.")
    return said


# ---------------------------------------------------------------------- the comparison in words
def _leader_at_budget(cmp: Comparison) -> str:
    reached = [r for r in cmp.studies if r.best_at_budget is not None]
    top = (min if cmp.minimize else max)(r.best_at_budget for r in reached)
    leaders = [r.label for r in reached if r.best_at_budget == top]
    return f"{' and '.join(leaders)} {'tie' if len(leaders) > 1 else 'is ahead'}"


def _pruning_sentences(cmp: Comparison) -> list[str]:
    """What pruning saved: per study, or per policy (one share per search) where some policy was
    searched more than once."""
    if cmp.repeated:
        shares = [f"{g.policy} " + ("does not prune" if g.studies[0].pruner == "none" else
                                    " and ".join(percent(r.saved_seconds, r.unpruned_seconds) for r in g.studies))
                  for g in cmp.groups]
        return [f"Pruning saved, of each search's device time, by policy: {'; '.join(shares)}."]
    said = []
    for r in cmp.studies:
        if r.pruner == "none":
            said.append(f"{r.label} does not prune.")
        elif r.saved_seconds > 0:
            said.append(f"Pruning saved {percent(r.saved_seconds, r.unpruned_seconds)} of "
                        f"{r.label}'s device time (estimate: {seconds_amount(r.saved_seconds)} of "
                        f"{seconds_amount(r.unpruned_seconds)} {cmp.unit}).")
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
        missing = [why for ok, why in ((saved_ok, f"saved {percent(r.saved_seconds, r.unpruned_seconds)}"),
                                       (best_ok, f"best at equal budget {metric_value(r.best_at_budget)} vs "
                                                 f"{metric_value(rival_best)} without pruning")) if not ok]
        verdicts.append(f"{r.label}: {'met' if saved_ok and best_ok else 'not met (' + '; '.join(missing) + ')'}")
    return (f"The goal (pruning saves at least {PRUNING_GOAL:.0%} of the device time with a best no worse than "
            f"without pruning, at equal budget): " + "; ".join(verdicts) + ".")


def _group_value(g: PolicyGroup) -> str:
    counted = g.searches if len(g.values) == len(g.studies) else \
        f"{len(g.values)} of {g.searches} with a complete trial by then"
    if not g.values:
        return f"none yet ({g.searches})"
    if len(g.values) == 1:
        return f"{metric_value(g.values[0])} ({counted})"
    return f"mean {metric_value(g.mean)} over {counted} ({metric_value(min(g.values))} to {metric_value(max(g.values))})"


def _separation_sentences(cmp: Comparison) -> list[str]:
    """Whether the searches separate the policies: the leading policy (best mean at the equal
    budget) against each other one. Ahead means every search of it beat every search of the
    other; where they overlap the searches do not rank the two policies."""
    ranked = sorted((g for g in cmp.groups if g.values), key=lambda g: g.mean if cmp.minimize else -g.mean)
    if len(ranked) < 2:
        return []
    lead, said = ranked[0], []
    worst_lead = max(lead.values) if cmp.minimize else min(lead.values)
    for other in ranked[1:]:
        best_other = min(other.values) if cmp.minimize else max(other.values)
        if _better(worst_lead, best_other, cmp.minimize):
            said.append(f"Every {lead.policy} search was ahead of every {other.policy} search.")
        else:
            said.append(f"The searches of {lead.policy} and {other.policy} overlap: "
                        f"{len(lead.values)} and {len(other.values)} searches do not rank these two policies.")
    return said


def _policy_sentences(cmp: Comparison) -> list[str]:
    """The verdict by policy, when some policy was searched more than once; else the note that
    every number rests on one search."""
    if not cmp.repeated:
        return ["Each policy here rests on one search, and which trials a search draws (its seed, its workers' "
                "timing) moves its best as much as a policy can: search each policy at least twice before "
                "choosing between them."] if len(cmp.groups) > 1 else []
    by_policy = "; ".join(f"{g.policy} {_group_value(g)}" for g in cmp.groups)
    return [f"By policy, at that budget: {by_policy}.", *_separation_sentences(cmp)]


def verdict(cmp: Comparison) -> str:
    """One paragraph in plain words, computed from the numbers."""
    sense = "lower" if cmp.minimize else "higher"
    at_budget = ", ".join(f"{r.label} {metric_value(r.best_at_budget)}" for r in cmp.studies)
    parts = [*cmp.caveats, f"At equal budget ({seconds_amount(cmp.budget_seconds)} {cmp.unit}, the smallest total any of these studies "
             f"spent) the best {cmp.metric} reached was: {at_budget} ({sense} is better); "
             f"{_leader_at_budget(cmp)}."]
    parts += _policy_sentences(cmp)
    parts += _pruning_sentences(cmp)
    goal = pruning_goal_sentence(cmp)
    if goal:
        parts.append(goal)
    return " ".join(parts)


# ---------------------------------------------------------------------- the comparison drawn
def _curve_xy(curve: list[tuple[float, float | None]]) -> tuple[list[float], list[float]]:
    points = [(x, y) for x, y in curve if y is not None]
    return [x for x, _ in points], [y for _, y in points]


DASHES = ("solid", "dash", "dot", "dashdot")        # the searches of one policy (plotly's names)
MPL_DASHES = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-."}


def line_styles(cmp: Comparison) -> dict[str, tuple[int, str]]:
    """Study name -> (colour index, dash): one colour per policy, one dash per search of it, so
    that repeated searches read as one policy in the plots."""
    return {r.name: (g, DASHES[k % len(DASHES)]) for g, group in enumerate(cmp.groups)
            for k, r in enumerate(group.studies)}


def comparison_figure(cmp: Comparison):
    """plotly: each study's best-so-far against cumulative device-seconds, and the equal budget."""
    import plotly.colors
    import plotly.graph_objects as go

    palette, styles = plotly.colors.qualitative.Plotly, line_styles(cmp)
    fig = go.Figure()
    for r in cmp.studies:
        xs, ys = _curve_xy(r.curve)
        colour, dash = styles[r.name]
        hover = f"{html.escape(r.label)}<br>%{{x:,.1f}} {cmp.unit}<br>best %{{y:.4f}}<extra></extra>"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name=html.escape(r.label),
                                 line=dict(color=palette[colour % len(palette)], dash=dash), hovertemplate=hover))
    fig.add_vline(x=cmp.budget_seconds, line=dict(color="#555", dash="dash", width=1.5),
                  annotation_text=f"equal budget {seconds_amount(cmp.budget_seconds)} {cmp.unit}",
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
    styles = line_styles(cmp)
    for r in cmp.studies:
        xs, ys = _curve_xy(r.curve)
        colour, dash = styles[r.name]
        ax.plot(xs, ys, drawstyle="steps-post", marker="o", markersize=3, label=r.label, color=f"C{colour % 10}",
                linestyle=MPL_DASHES[dash])
    ax.axvline(cmp.budget_seconds, color="#555", linestyle="--", linewidth=1.2,
               label=f"equal budget {seconds_amount(cmp.budget_seconds)} {cmp.unit}")
    ax.set(title="Best value so far against device time spent", xlabel=f"{cmp.unit} spent (cumulative)",
           ylabel=f"best {cmp.metric} so far")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=PNG_DPI)
    plt.close(fig)
    return path


def build_comparison(storage_url: str, study_names: list[str], out_dir: str | Path) -> Path:
    """Write out_dir/compare.html and out_dir/compare.png comparing the studies; return the HTML path."""
    cmp = compare_studies([open_study_readonly(storage_url, name) for name in study_names])
    out = output_folder(out_dir)
    png = write_comparison_png(cmp, out / "compare.png")
    names = ", ".join(r.name for r in cmp.studies)
    page = out / "compare.html"
    page.write_text(render_page("compare.html.j2", f"mainrun comparison: {names}", cmp=cmp, names=names,
                                storage=redact(storage_url), verdict=verdict(cmp),
                                plot=plot_div(comparison_figure(cmp), "plot-compare"), tolerance=REACH_TOLERANCE,
                                png=png.name), encoding="utf-8")
    return page
