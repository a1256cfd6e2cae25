"""A confirmation as its readers want it (the table of mainrun-confirm, the report's Confirmed
section, mainrun-export --confirmed): every config of the companion study with its value on each
train seed (the search's own run is its official seed), ranked by mean, and the verdicts of the
best against the references and the runner-up, or of every config against an ablation's base.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import SearchError
from .companion import pair_of
from .finalists import REFERENCES, Finalist, config_key, official_seed
from .stats import Paired, Spread, paired, spread, verdict, winners_curse


@dataclass
class Confirmed:
    """One config: its value by train seed (official included) and what its other runs lack."""
    finalist: Finalist
    official_seed: int
    values: dict[int, float]
    missing: dict[int, str] = field(default_factory=dict)      # seed -> why it has no value
    rank: int = 0

    @property
    def name(self) -> str:
        return self.finalist.name

    @property
    def official(self) -> float:
        return self.values[self.official_seed]

    @property
    def spread(self) -> Spread:
        return spread(list(self.values.values()))

    @property
    def fresh(self) -> Spread | None:
        """The extra seeds alone, without the official run the config was selected on."""
        others = [v for s, v in self.values.items() if s != self.official_seed]
        return spread(others) if others else None

    @property
    def winners_curse(self) -> bool:
        return self.fresh is not None and winners_curse(self.official, self.fresh)


@dataclass
class Comparison:
    """`a` against `b` on the seeds both have (result.diff > 0: a is better)."""
    a: Confirmed
    b: Confirmed
    why: str                       # "reference", "runner-up", both, or "against BASE"
    result: Paired
    seeds: list[int]

    @property
    def verdict(self) -> str:
        return verdict(self.a.name, self.b.name, self.result)

    @property
    def change(self) -> tuple[float, tuple[float, float] | None]:
        """a's mean loss minus b's over the shared seeds, and its CI: negative is better for a."""
        ci = self.result.ci
        return -self.result.diff, (-ci[1], -ci[0]) if ci else None


@dataclass
class Confirmation:
    study: str
    companion: str
    configs: list[Confirmed]       # ranked by mean, best first
    comparisons: list[Comparison]
    against: str | None = None     # an ablation: every config compared with this one, not the best with a few

    @property
    def seeds(self) -> list[int]:
        """Every train seed any config has a value for, official first."""
        official = sorted({c.official_seed for c in self.configs})
        return official + sorted({s for c in self.configs for s in c.values} - set(official))

    @property
    def best(self) -> Confirmed | None:
        return self.configs[0] if self.configs else None


def read_confirmation(search: optuna.Study, companion: optuna.Study, against: str | None = None) -> Confirmation:
    """The confirmation of `search` that `companion` holds. A config's runs are grouped by its
    config (not the trial number: a config rerun under another number is the same config).
    `against` names a config (an ablation's base): then every other config is compared with it;
    otherwise the best is compared with the references and the runner-up."""
    by_number = {t.number: t for t in search.get_trials(deepcopy=False)}
    complete = sorted((t for t in by_number.values() if t.state == TrialState.COMPLETE and "config" in t.user_attrs),
                      key=lambda t: (t.value, t.number))
    configs: dict[str, Confirmed] = {}
    for run in sorted(companion.get_trials(deepcopy=False), key=lambda t: t.number):
        pair = pair_of(run)
        if pair is None:
            continue
        key, seed = pair
        if key not in configs:
            source = _source(run, key, by_number, complete)
            if source is None:
                continue                          # its search trial is gone: nothing official to pair with
            name = run.user_attrs.get("config_name") or f"trial {source.number}"
            finalist = Finalist(source, name, reference=name in REFERENCES)
            seed0 = official_seed(source.user_attrs["config"])
            configs[key] = Confirmed(finalist, seed0, {seed0: source.value})
        _add_run(configs[key], seed, run)
    ranked = sorted(configs.values(), key=lambda c: (c.spread.mean, c.finalist.trial.number))
    for i, c in enumerate(ranked):
        c.rank = i + 1
    if against is None:
        return Confirmation(search.study_name, companion.study_name, ranked, _comparisons(ranked))
    base = next((c for c in ranked if c.name == against), None)
    if base is None:
        raise SearchError(f"--against {against}: no config of that name in '{companion.study_name}'; its configs: "
                          + ", ".join(c.name for c in ranked))
    return Confirmation(search.study_name, companion.study_name, ranked,
                        [_compare(c, base, f"against {against}") for c in ranked if c is not base], against)


def _source(run: FrozenTrial, key: str, by_number: dict[int, FrozenTrial], complete: list[FrozenTrial]
            ) -> FrozenTrial | None:
    """The search trial whose config this run repeats: the one it names, or the best complete
    trial with that config."""
    named = by_number.get(run.user_attrs.get("source_trial"))
    if named is not None and named.state == TrialState.COMPLETE and config_key(named.user_attrs["config"]) == key:
        return named
    return next((t for t in complete if config_key(t.user_attrs["config"]) == key), None)


def _add_run(config: Confirmed, seed: int, run: FrozenTrial) -> None:
    if seed in config.values:                    # the first complete run of a pair counts (a rerun is the same)
        return
    if run.state == TrialState.COMPLETE:
        config.values[seed] = run.value
        config.missing.pop(seed, None)
    elif run.state == TrialState.PRUNED:
        config.missing[seed] = run.user_attrs.get("prune_reason", "pruned")
    elif run.state == TrialState.FAIL:
        config.missing[seed] = "failed: " + run.user_attrs.get("fail_reason", "its worker was lost")
    else:                                        # the latest run of a pair says where it stands
        config.missing[seed] = run.state.name.lower()


def _comparisons(ranked: list[Confirmed]) -> list[Comparison]:
    """The best config against each reference and against the runner-up, on their shared seeds."""
    if len(ranked) < 2:
        return []
    best, others = ranked[0], ranked[1:]
    why = {}
    for c in others:
        if c.finalist.reference:
            why[c.name] = "reference"
    runner_up = others[0]
    why[runner_up.name] = "reference and runner-up" if runner_up.name in why else "runner-up"
    return [_compare(best, c, why[c.name]) for c in others if c.name in why]


def _compare(a: Confirmed, b: Confirmed, why: str) -> Comparison:
    shared = sorted(set(a.values) & set(b.values))
    return Comparison(a, b, why, paired([a.values[s] for s in shared], [b.values[s] for s in shared]), shared)
