"""The companion study NAME-confirm, in the search study's storage, that holds a confirmation's
runs: the search study's sampler never sees them, and its trial count and next suggestion stay
as they were.

Each run is one trial, enqueued WAITING with the user attrs that say what it is (`pair_attrs`):
a worker takes it, and the confirm objective trains the config and seed those attrs name. A
(config, seed) pair is enqueued once; the same command run again enqueues only the pairs that
have no trial yet, or whose every trial was cut short (interrupted, or lost with its worker).
"""
from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import __version__
from ..commands import confirm_command, export_command
from ..errors import SearchError
from ..storage import machine_lock
from .finalists import Finalist, config_key

SUFFIX = "-confirm"
METRIC = "val_loss"


def companion_name(study_name: str) -> str:
    return study_name + SUFFIX


# ---------------------------------------------------------------------- one run: a (config, seed) pair
def pair_attrs(finalist: Finalist, seed: int, study_name: str, dataset: str) -> dict[str, Any]:
    """The user attrs of the trial that trains `finalist`'s config on train seed `seed`: the
    objective reads its config from them, and optuna-dashboard shows what it confirms."""
    return {"source_study": study_name, "source_trial": finalist.trial.number, "config_name": finalist.name,
            "train_seed": seed, "config": {**finalist.config, "dataset": dataset, "train_seed": seed},
            "confirms": f"{finalist.label} of study '{study_name}' on train seed {seed}"}


def pair_of(trial: FrozenTrial) -> tuple[str, int] | None:
    """(config key, train seed) of a confirm trial; None for a trial that is not one."""
    attrs = trial.user_attrs
    if "config" not in attrs or "train_seed" not in attrs:
        return None
    return config_key(attrs["config"]), attrs["train_seed"]


def _still_counts(trial: FrozenTrial) -> bool:
    """Whether a trial settles its pair: it finished, waits, runs, or failed for a reason of its
    own (out of memory, refused), which would fail again. A trial interrupted or lost with its
    worker (failed with no reason of its own) does not: its pair is run again."""
    if trial.state != TrialState.FAIL:
        return True
    return trial.user_attrs.get("fail_reason", "interrupted") != "interrupted"


def missing_pairs(companion: optuna.Study | None, finalists: list[Finalist], seeds: list[int]
                  ) -> list[tuple[Finalist, int]]:
    """The pairs with no trial that settles them, seed by seed (every finalist on the first seed,
    then the next): a confirmation cut short still holds paired seeds."""
    settled = set()
    if companion is not None:
        settled = {pair for t in companion.get_trials(deepcopy=False) if (pair := pair_of(t)) and _still_counts(t)}
    return [(f, s) for s in seeds for f in finalists if (f.key, s) not in settled]


# ---------------------------------------------------------------------- the study
def read_companion(search: optuna.Study) -> optuna.Study | None:
    """The companion of `search`, opened on the same storage object (read-only when that is), or
    None if there is none yet. A study of that name made by something else is refused."""
    storage = search._storage                    # Optuna exposes a study's storage only privately
    name = companion_name(search.study_name)
    if name not in optuna.get_all_study_names(storage):
        return None
    companion = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    _check_companion(companion, search.study_name)
    return companion


def _check_companion(companion: optuna.Study, study_name: str) -> None:
    owner = companion.user_attrs.get("confirms_study")
    if owner == study_name or (owner is None and not companion.user_attrs and not companion.get_trials(deepcopy=False)):
        return                                   # ours, or ours being created (nothing in it yet)
    raise SearchError(f"study '{companion.study_name}' exists but is not the confirmation of study '{study_name}' "
                      f"({'it confirms ' + repr(owner) if owner else 'another tool made it'}); rename or delete it")


def open_companion(search: optuna.Study, storage, storage_url: str, echo: Callable[[str], None]) -> optuna.Study:
    """Create the companion study of `search` (its identity, a note for optuna-dashboard), or
    load it; in `storage`, the search study's, opened for writing."""
    name = companion_name(search.study_name)
    try:
        companion = optuna.create_study(study_name=name, storage=storage, direction="minimize")
        echo(f"confirm: created study '{name}' for the runs")
    except optuna.exceptions.DuplicatedStudyError:
        companion = optuna.load_study(study_name=name, storage=storage)
        _check_companion(companion, search.study_name)
    if "confirms_study" not in companion.user_attrs:
        companion.set_metric_names([METRIC])
        for key in ("dataset", "titles_sha256"):
            companion.set_user_attr(key, search.user_attrs.get(key))
        companion.set_user_attr("mainrun_version", __version__)
        _save_dashboard_note(companion, search.study_name, storage_url)
        companion.set_user_attr("confirms_study", search.study_name)      # last: the identity is complete
    return companion


def enqueue_pairs(companion: optuna.Study, pairs: list[tuple[Finalist, int]], study_name: str, dataset: str) -> None:
    for finalist, seed in pairs:
        companion.enqueue_trial({}, user_attrs=pair_attrs(finalist, seed, study_name, dataset))


def enqueue_lock(storage_url: str, study_name: str):
    """Held from reading what is missing to enqueueing it, so two confirmations started at once
    on this machine do not both enqueue a pair."""
    return machine_lock("confirm", f"{storage_url}\0{companion_name(study_name)}", timeout=120)


def _save_dashboard_note(companion: optuna.Study, study_name: str, storage_url: str) -> None:
    from optuna_dashboard import save_note

    save_note(companion, f"# {companion.study_name}\n\n"
                         f"Robustness runs of study `{study_name}`'s finalists (its best configs and the references "
                         "it enqueued), each on extra train seeds. Each trial's user attrs say which config "
                         "(`source_trial`, `config_name`) and which `train_seed`; the data split and the scored "
                         "tokens are the official run's. The search study's own trials are the official seed.\n\n"
                         f"Run the missing ones, and print the table with the verdicts:\n\n"
                         f"```\n{confirm_command(storage_url, study_name)}\n```\n\n"
                         f"Export the config with the best mean:\n\n"
                         f"```\n{export_command(storage_url, study_name, confirmed=True)}\n```\n")
