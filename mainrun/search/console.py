"""What a search prints: a line per finished trial, the summary at the end, and the commands to
run next. The control code (study, workers, the search) says its one-line messages through an
`echo` it is given; this module owns that default and every longer piece of text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..commands import confirm_command, dashboard_command, export_command
from ..edges import edge_warnings
from ..formats import clock, param_value
from ..space import SearchSpace
from .study import describe_counts, display_params, tally

Echo = Callable[[str], None]

NO_GPU_WARNING = ("!" * 78 + "\n! WARNING: no GPU found. Each trial is a full seven-epoch run; on the CPU a search\n"
                  "! of this space takes days. Use a machine with a GPU, or search_spaces/smoke.yaml to try it.\n"
                  + "!" * 78)


def say(message: str) -> None:
    """A line on stdout at once: workers and the search interleave, and a log file is read live."""
    print(message, flush=True)


def worker_echo(worker: int) -> Echo:
    """What worker `worker` says, marked as its own: [w0] ..."""
    return lambda message: say(f"[w{worker}] {message}")


def params_text(trial: FrozenTrial) -> str:
    return " ".join(f"{k}={param_value(v, 3)}" for k, v in display_params(trial).items())


def trial_line(trial: FrozenTrial, *, best: FrozenTrial | None, finished: int, trials: int, elapsed: float,
               finished_here: int) -> str:
    """One finished trial, and where the study stands: its best so far, `finished` of `trials`,
    the time since this search started and the ETA at the pace of the `finished_here` trials
    this search finished itself."""
    best_text = f"best {best.value:.4f} (#{best.number})" if best is not None else "best -"
    eta = clock(elapsed / finished_here * max(trials - finished, 0)) if finished_here else "-"
    twin = trial.user_attrs.get("duplicate_of")
    if twin is not None and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        # the sampler proposed a finished point again: that trial's result, no run spent
        result = f"val_loss {trial.value:.4f}" if trial.state == TrialState.COMPLETE else "pruned"
        outcome = f"{result}, repeat of #{twin} (not retrained)"
    elif trial.state == TrialState.COMPLETE:
        outcome = f"val_loss {trial.value:.4f} complete"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values), float("nan")) \
            if trial.intermediate_values else float("nan")
        outcome = f"val_loss {last:.4f} pruned at eval {trial.last_step}"
    else:
        outcome = f"FAILED ({trial.user_attrs.get('fail_reason', 'see log')})"
    what = params_text(trial) or trial.user_attrs.get("confirms", "")      # a confirmation's run has no params
    return (f"trial {trial.number:>3} | {outcome} | {best_text} | {finished}/{trials} finished | "
            f"{clock(elapsed)} elapsed, ETA {eta} | {what}")


def print_summary(study: optuna.Study, storage_url: str, artifacts: Path, top: int = 5, echo: Echo = say,
                  space: SearchSpace | None = None) -> None:
    """The study's counts, its best complete trials, where the best sits at the edge of `space`,
    and the commands to look at it and train its best."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # a repeat holds its original's config and value: listing it would only push a config out
    done = sorted((t for t in complete if "duplicate_of" not in t.user_attrs), key=lambda t: t.value)
    echo(f"\nstudy '{study.study_name}': {describe_counts(tally(study))}")
    if done:
        echo(f"{'trial':>5}  {'val_loss':>8}  {'train s':>7}  params")
        for t in done[:top]:
            seconds = t.user_attrs.get("train_seconds")
            echo(f"{t.number:>5}  {t.value:>8.4f}  {'-' if seconds is None else f'{seconds:.1f}':>7}  {params_text(t)}")
        if repeats := len(complete) - len(done):
            echo(f"  ({repeats} repeat(s) of a finished config not listed: same value, not retrained)")
    edges = edge_warnings(space, done[0].user_attrs["config"]) if space and done and "config" in done[0].user_attrs \
        else []
    print_edges(edges, f"the best trial ({done[0].number})" if done else "", echo)
    echo("\nnext:")
    echo(f"  {dashboard_command(storage_url, artifacts)}")
    echo(f"  {export_command(storage_url, study.study_name)}")
    echo(f"  {confirm_command(storage_url, study.study_name)}   # the best configs on extra train seeds")


def print_edges(edges: list[str], who: str, echo: Echo) -> None:
    """The edge lines of `who` (a config), under a line that says what they mean; nothing if none."""
    if edges:
        echo(f"\n{who} is at the edge of the space; the optimum may lie outside it:")
        for line in edges:
            echo(f"  {line}")
