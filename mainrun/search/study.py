"""The study a search writes into, and what its trials mean to whoever reads them.

A new study gets its identity (the space file and its meaning, the sampler and pruner, the dataset
and a digest of its titles), a note for optuna-dashboard and the space's known configs enqueued; an
existing one is resumed only if it was made from the same inputs, since its trials would not
compare otherwise. The readers (console, export, report, compare) share the metric's name, the
state counts and `display_params`.
"""
from __future__ import annotations

import hashlib
import itertools
import re
import shlex
import time
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import __version__
from ..commands import export_command
from ..errors import SearchError
from ..storage import drop_idle_connections, redact

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data import Data
    from ..space import SearchSpace

METRIC = "val_loss"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IDENTITY_WAIT = 60.0     # seconds a search waits for a study another search is creating


# ---------------------------------------------------------------------- reading a study
def tally(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def finished_count(study: optuna.Study) -> int:
    counts = tally(study)
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def describe_counts(counts: dict[TrialState, int]) -> str:
    return (f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running, "
            f"{counts[TrialState.WAITING]} waiting")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:                      # no complete trial yet
        return None


def display_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
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


# ---------------------------------------------------------------------- making and resuming it
def open_study(space: SearchSpace, storage, name: str, data: Data, base: RunConfig, new_study: bool = False,
               echo: Callable[[str], None] = print) -> optuna.Study:
    """Create the study (with its identity and enqueued trials) or resume it. An existing
    study made from a different space or dataset is refused: its trials would not compare.
    With new_study, such a study's first NAME-k made from these inputs is resumed instead, or
    the next free NAME-k created, so that the same command run again resumes what it started.
    Its sampler and pruner are set where trials are asked for: in each worker (set_policy)."""
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        mismatch = _mismatch(study, space, data)
        if mismatch:
            alt = _alternative(storage, name, existing, space, data)
            verb = "resume" if alt in existing else "start"
            if not new_study:
                raise SearchError(
                    f"study '{name}' already exists with a different {' and '.join(mismatch)}. "
                    f"Resume it with the same inputs, pick another name with --study, or pass --new-study "
                    f"to {verb} '{alt}'.")
            echo(f"search: --new-study: study '{name}' was made from other inputs; {verb} '{alt}'")
            return open_study(space, storage, alt, data, base, echo=echo)
        echo(f"search: resuming study '{name}' ({describe_counts(tally(study))})")
        added = _enqueue_untried(study, space)
        if added:
            echo(f"search: enqueued {', '.join(added)}: known configs of the space not tried yet "
                 "(added to the file since, or cut short)")
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:        # another search created it a moment ago
        return open_study(space, storage, name, data, base, new_study, echo)
    try:
        study.set_metric_names([METRIC])
        study.set_user_attr("space_file", space.path)
        study.set_user_attr("space_yaml", space.text)
        study.set_user_attr("sampler", space.sampler["name"])
        study.set_user_attr("pruner", space.pruner["name"])
        study.set_user_attr("policy", {"sampler": space.sampler, "pruner": space.pruner})   # with options
        study.set_user_attr("dataset", base.dataset)
        study.set_user_attr("titles_sha256", data.titles_sha256)
        study.set_user_attr("mainrun_version", __version__)
        added = _enqueue_untried(study, space)
        _save_dashboard_note(study, space, base, storage.url)
        study.set_user_attr("space_sha256", space.sha256)     # last: the study is complete (see _identity)
    except BaseException:
        # Ctrl-C or an error half-way: a study without its identity would block the same command
        # (it waits for the identity, then refuses), so it goes; it holds no trial results yet.
        try:
            drop_idle_connections(storage)     # one a Ctrl-C left mid-read could not delete
            optuna.delete_study(study_name=name, storage=storage)
        except Exception as cleanup:           # the error that stopped the creation is the one to report
            echo(f"search: could not remove the half-made study '{name}' ({type(cleanup).__name__}: {cleanup}); "
                 f"delete it before rerunning: optuna delete-study --study-name {name} --storage '{redact(storage.url)}'")
        raise
    echo(f"search: created study '{name}'" + (f" with {len(added)} enqueued trials" if added else ""))
    return study


def _alternative(storage, name: str, existing: set[str], space: SearchSpace, data: Data) -> str:
    """For --new-study: the first NAME-k made from these inputs, else the first free NAME-k. A
    NAME-k still being created (or never completed) is neither: it is not waited for here."""
    numbered = re.compile(rf"{re.escape(name)}-(\d+)")
    taken = sorted((int(m[1]), n) for n in existing if (m := numbered.fullmatch(n)) and int(m[1]) >= 2)
    for _, other in taken:
        study = optuna.load_study(study_name=other, storage=storage)
        if "space_sha256" in study.user_attrs and not _mismatch(study, space, data):
            return other
    return next(f"{name}-{i}" for i in itertools.count(2) if f"{name}-{i}" not in existing)


def _mismatch(study: optuna.Study, space: SearchSpace, data: Data) -> list[str]:
    """What differs between the inputs a study was made from and these; empty if nothing."""
    theirs = _identity(study)
    mismatch = []
    if theirs["space_sha256"] != space.sha256:
        mismatch.append(f"search space or policy (it was made from {theirs.get('space_file')} with sampler "
                        f"{theirs.get('sampler')} and pruner {theirs.get('pruner')}; --sampler and --pruner "
                        "replace the file's options with mainrun's defaults, which counts as a change)")
    if theirs.get("titles_sha256") not in (None, data.titles_sha256):     # None: made before it was recorded
        mismatch.append(f"dataset (it was made on {theirs.get('dataset')})")
    return mismatch


def _identity(study: optuna.Study) -> dict[str, Any]:
    """The study's user attrs, once its creator has written them all: `space_sha256` is written
    last, after the enqueued trials. A search started beside the creator waits for it, so that
    it neither skips the dataset and space check nor enqueues the known configs a second time."""
    deadline = time.time() + IDENTITY_WAIT
    while "space_sha256" not in (attrs := study.user_attrs):
        if time.time() >= deadline:
            raise SearchError(f"study '{study.study_name}' exists but was never completed: it has no search space "
                              "recorded (another tool made it, or the search that created it stopped at once). "
                              f"Pick another name with --study, or delete it: optuna delete-study --study-name "
                              f"{shlex.quote(study.study_name)} --storage URL")
        time.sleep(0.5)
    return attrs


def _enqueue_untried(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue the space's known configs that the study has not tried; return their labels.
    A new study gets all of them. A resumed one gets those added to the file since and those
    whose every trial was cut short: interrupted, or lost with its worker (failed for a stale
    heartbeat, with no reason of its own, also after Optuna's retries died too). A known
    config that finished, failed on its own (OOM, refused, an error) or is still waiting or
    running is not enqueued again. (Optuna's skip_if_exists would also skip a cut-short one.)"""
    tried = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False)
             if not (t.state == TrialState.FAIL and t.user_attrs.get("fail_reason", "interrupted") == "interrupted")]
    added = []
    for label, params in space.enqueue:
        if params not in tried:
            study.enqueue_trial(params, user_attrs={"enqueued_as": label})
            tried.append(params)
            added.append(label)
    return added


def set_policy(study: optuna.Study, space: SearchSpace, seed: int | None) -> None:
    """The space's sampler (seeded) and pruner, for the trials this study object asks for."""
    study.sampler = space.make_sampler(seed)
    study.pruner = space.make_pruner()


def _save_dashboard_note(study: optuna.Study, space: SearchSpace, base: RunConfig, storage_url: str) -> None:
    from optuna_dashboard import save_note
    params = ", ".join(p.name for p in space.params)
    save_note(study, f"# {study.study_name}\n\n{space.description or ''}\n\n"
                     f"* space: `{space.path}` (samples {params})\n* dataset: `{base.dataset}`\n"
                     f"* metric: `{METRIC}` (Mainrun evaluate(), per character; lower is better)\n\n"
                     f"Export the best trial and train it:\n\n"
                     f"```\n{export_command(storage_url, study.study_name)}\n```\n")


def sampler_seed(seed: int | None, worker: int, trials_so_far: int) -> int | None:
    """A worker's sampler seed, from --seed, the worker and the trials the study already holds:
    reproducible for a fresh study, but a resumed study (or a later round of workers) does not
    replay the first run's suggestions, which would all be duplicates."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{worker}/{trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
