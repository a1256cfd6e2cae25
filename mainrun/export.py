"""mainrun-export: a trial's recorded run config, written as a YAML file that mainrun-train runs."""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import __version__
from .config import RunConfig
from .errors import SearchError
from .storage import DEFAULT_STORAGE, open_study_readonly, redact


def export_trial(storage_url: str, study_name: str, out: str,
                 trial_number: int | None = None) -> optuna.trial.FrozenTrial:
    """Write the run config of the best (or the given) trial to `out`; return that trial."""
    study = open_study_readonly(storage_url, study_name)
    if trial_number is None:
        try:
            trial = study.best_trial
        except ValueError:
            raise SearchError(f"study '{study_name}' has no complete trial yet") from None
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not matches:
            raise SearchError(f"study '{study_name}' has no trial {trial_number}")
        trial = matches[0]
    if "config" not in trial.user_attrs:
        raise SearchError(f"trial {trial.number} has no recorded config (state {trial.state.name})")
    cfg = RunConfig.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}")
    if trial.state == TrialState.COMPLETE:
        outcome, run = f"complete, val_loss {trial.value:.6f}", "reproduce"
    else:          # a pruned trial's value is its last intermediate one, not a full run's
        outcome, run = f"{trial.state.name.lower()}, no full-run val_loss", "train it"
    header = (f"mainrun run config exported from study '{study_name}', trial {trial.number} ({outcome})\n"
              f"exported {time.strftime('%Y-%m-%d %H:%M:%S')} by mainrun {__version__}\n"
              f"{run}: mainrun-train --config {Path(out).name}")
    try:
        cfg.to_yaml(out, header=header)
    except OSError as e:
        raise SearchError(f"cannot write {out}: {e.strerror or e}") from None
    return trial


def export_command(storage_url: str, study_name: str) -> str:
    """The shell line that exports a study's best trial and trains it (names quoted for the shell)."""
    storage = "" if storage_url == DEFAULT_STORAGE else f" --storage {shlex.quote(redact(storage_url))}"
    return (f"mainrun-export --study {shlex.quote(study_name)}{storage} --out best.yaml && "
            "mainrun-train --config best.yaml")
