"""What a confirmation trains: the search study's finalists (its best complete trials with
distinct configs, and the reference trials it enqueued) and the extra train seeds, the same for
every finalist so that each seed gives a paired comparison.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig
from ..errors import SearchError

REFERENCES = ("baseline", "report-000", "report-003")       # enqueued_as labels a winner is compared with
DEFAULT_TOP, DEFAULT_SEEDS = 3, 3
# Fields that do not make two configs different runs: where the titles are read from (checked
# by their digest instead), and the train seed, which is what a confirmation varies.
NOT_IDENTITY = ("dataset", "train_seed")


def config_key(config: dict[str, Any]) -> str:
    """A config's identity: two trials with the same key train the same run (up to the seed)."""
    return json.dumps({k: v for k, v in config.items() if k not in NOT_IDENTITY}, sort_keys=True)


def official_seed(config: dict[str, Any]) -> int:
    """The train seed of the search's own run of this config (1337 unless the space set one)."""
    return RunConfig.from_dict(config, source="a trial's recorded config").effective_train_seed


@dataclass(frozen=True)
class Finalist:
    """A search trial chosen for confirmation, with the name the verdicts use: its enqueued
    label (report-003), or 'trial 27'."""
    trial: FrozenTrial
    name: str
    reference: bool = False

    @property
    def config(self) -> dict[str, Any]:
        return self.trial.user_attrs["config"]

    @property
    def key(self) -> str:
        return config_key(self.config)

    @property
    def label(self) -> str:
        """The name, with the trial number when the name does not say it."""
        own = f"trial {self.trial.number}"
        return own if self.name == own else f"{self.name} ({own})"


def select_finalists(study: optuna.Study, top: int | None) -> tuple[list[Finalist], list[str]]:
    """The `top` best complete trials with distinct configs (None: all of them, as an ablation
    study wants), then the complete reference trials not among them; and notes on what is short
    (fewer trials than `top`, references that did not complete). A config run twice (a duplicate
    suggestion) counts once, as its first run."""
    complete = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if "config" in t.user_attrs), key=lambda t: (t.value, t.number))
    if not complete:
        raise SearchError(f"study '{study.study_name}' has no complete trial with a recorded config: "
                          "nothing to confirm yet")
    chosen: dict[str, Finalist] = {}
    for t in complete:
        if top is not None and len(chosen) == top:
            break
        chosen.setdefault(config_key(t.user_attrs["config"]), Finalist(t, _name(t), _name(t) in REFERENCES))
    notes = []
    if top is not None and len(chosen) < top:
        notes.append(f"study '{study.study_name}' has {len(chosen)} complete trial(s) with distinct configs, "
                     f"fewer than --top {top}: confirming those")
    enqueued = [t for t in study.get_trials(deepcopy=False) if "enqueued_as" in t.user_attrs]
    if top is None:        # an ablation: a variant that never completed is named, not silently missing
        for label in dict.fromkeys(t.user_attrs["enqueued_as"] for t in enqueued):
            runs = [t for t in enqueued if t.user_attrs["enqueued_as"] == label]
            if label not in REFERENCES and all(t.state != TrialState.COMPLETE for t in runs):
                notes.append(f"enqueued {label} did not complete ({_states(runs)}): left out")
    for label in REFERENCES:
        runs = [t for t in enqueued if t.user_attrs["enqueued_as"] == label]
        done = [t for t in complete if t.number in {r.number for r in runs}]      # best first
        if not done:
            if runs:
                notes.append(f"reference {label} did not complete ({_states(runs)}): left out")
            continue
        key = config_key(done[0].user_attrs["config"])
        if key in chosen:                  # among the best already, under another name
            chosen[key] = Finalist(chosen[key].trial, label, reference=True)
        else:
            chosen[key] = Finalist(done[0], label, reference=True)
    return list(chosen.values()), notes


def _states(trials: list[FrozenTrial]) -> str:
    return ", ".join(sorted({t.state.name.lower() for t in trials}))


def _name(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("enqueued_as") or f"trial {trial.number}"


def train_seeds(count: int | None, seed_list: list[int] | None, official: set[int]) -> list[int]:
    """The extra train seeds: `seed_list` as given, or 1..count (default 3), never an `official`
    seed (the finalists' search runs already are that seed)."""
    if seed_list is not None:
        check_seed_list(seed_list)
        clash = sorted(set(seed_list) & official)
        if clash:
            raise SearchError(f"--seed-list contains {clash[0]}, the official train seed: the search's own run "
                              "is that seed already; pick other seeds")
        return list(seed_list)
    count = DEFAULT_SEEDS if count is None else count
    if count < 1:
        raise SearchError(f"--seeds must be at least 1; got {count}")
    seeds, s = [], 1
    while len(seeds) < count:
        if s not in official:
            seeds.append(s)
        s += 1
    return seeds


def check_seed_list(seed_list: list[int]) -> None:
    """The checks a seed list needs before any study is read: none, a repeat, or one out of range."""
    if not seed_list:
        raise SearchError("--seed-list is empty; give seeds such as 1,2,3")
    repeated = sorted({s for s in seed_list if seed_list.count(s) > 1})
    if repeated:
        raise SearchError(f"--seed-list repeats {repeated[0]}: each seed is one run, so a repeat would count "
                          "the same run twice")
    bad = [s for s in seed_list if not 0 <= s < 2**63]
    if bad:
        raise SearchError(f"--seed-list: {bad[0]} is not a train seed (an integer in [0, 2**63))")


@dataclass
class Plan:
    """What a confirmation would do: its finalists, its seeds, and the (finalist, seed) runs that
    the companion study does not hold yet; read from the studies without writing anything."""
    search: optuna.Study
    finalists: list[Finalist]
    seeds: list[int]
    missing: list[tuple[Finalist, int]]
    notes: list[str]
    companion: optuna.Study | None
