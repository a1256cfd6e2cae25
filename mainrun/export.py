"""mainrun-export: a trial's recorded run config (or a confirmation's best), written as a YAML file that
mainrun-train runs."""
from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import __version__
from .commands import confirm_command
from .config import RunConfig
from .errors import SearchError
from .storage import open_study_readonly


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
    _write(cfg, out, header)
    return trial


def export_confirmed(storage_url: str, study_name: str, out: str):
    """Write the run config of the confirmed config with the best mean over its train seeds (the
    official run's config: train_seed null); return its `Confirmed` entry."""
    # Imported here: the confirmation's modules load torch, which a plain export does without (~2 s).
    from .confirm.companion import read_companion
    from .confirm.console import spread_text
    from .confirm.results import read_confirmation
    from .confirm.stats import LEVEL
    study = open_study_readonly(storage_url, study_name)
    companion = read_companion(study)
    best = read_confirmation(study, companion).best if companion is not None else None
    if best is None:
        raise SearchError(f"study '{study_name}' has no confirmation yet; run: {confirm_command(storage_url, study_name)}")
    trial, (mean, ci) = best.finalist.trial, spread_text(best.spread)
    cfg = RunConfig.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}")
    seeds = ", ".join([f"{best.official_seed} (official)"] + [str(s) for s in sorted(best.values)
                                                             if s != best.official_seed])
    header = (f"mainrun run config exported from study '{study_name}': the best mean of its confirmation, "
              f"{best.finalist.label}\n"
              f"val_loss mean ± sd {mean} over {best.spread.n} train seeds ({seeds}); "
              f"{LEVEL:.0%} CI of the mean {ci}; official (train seed {best.official_seed}) {best.official:.6f}\n"
              f"exported {time.strftime('%Y-%m-%d %H:%M:%S')} by mainrun {__version__}\n"
              f"reproduce the official run: mainrun-train --config {Path(out).name}")
    _write(cfg, out, header)
    return best


def _write(cfg: RunConfig, out: str, header: str) -> None:
    try:
        cfg.to_yaml(out, header=header)
    except OSError as e:
        raise SearchError(f"cannot write {out}: {e.strerror or e}") from None
