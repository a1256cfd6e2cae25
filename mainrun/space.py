"""YAML search spaces: which run-config fields a study samples, how, and the study policy.

A space file (see search_spaces/arch.yaml for a commented example):

    description: free text
    cpu_ok: false              # true: no warning when run without a GPU (smoke spaces)
    sampler: {name: tpe, ...}  # tpe (default), random, cmaes, gp, grid; other keys go to the optuna class
    pruner: {name: median, ...}  # median (default), percentile, successive_halving, hyperband, none
    fixed: {precision: bf16}   # run-config fields set for every trial
    params:                    # sampled in file order
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}          # float range (log scale)
      n_layer: {low: 4, high: 10}                         # int range (the field's type decides)
      warmup_steps: {low: 0, high: 400, step: 50}         # stepped range
      optimizer: {choices: [sgd, adamw]}                  # categorical
      d_model: {values: [256, 384, 512, 768]}             # ordered numeric choices
      momentum: {low: 0.5, high: 0.99, when: {optimizer: sgd}}   # conditional: only when active
      head_dim: {values: [32, 64, 128]}                   # coupling: n_head = d_model // head_dim
    enqueue: [baseline, report-000, {optimizer: adamw, lr: 1.0e-3, label: fast-adamw}]   # tried first

The whole file is validated before anything starts; every problem is a `SpaceError`
naming the file and the key.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna

from .config import (LEGACY_KEYS, MAINRUN_FIXED, PRESETS, RunConfig, check_field, is_int, is_number,
                     migrate_legacy_keys, parse_yaml_text, read_yaml_text)
from .errors import ConfigError, SpaceError
from .policy import (DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS, make_pruner, make_sampler, missing_package,
                     parse_policy)

VIRTUAL = {"head_dim": int}        # sampled, but not a config field: n_head = d_model // head_dim
# Read only by the data preparation, which runs once per study from the base config (tokenizer
# and id streams): a per-trial value would change the recorded config and not the data.
DATA_FIELDS = ("dataset", "num_titles", "val_frac", "seed", "vocab_size")
# A sampled seed is noise the sampler would try to fit: every trial trains on the same seed, and
# other seeds are for confirming a config (mainrun-train --set train_seed=N), not for searching.
SEEDS = ("train_seed",)
NOT_SEARCHABLE = set(MAINRUN_FIXED) | set(DATA_FIELDS) | set(SEEDS) | {"mainrun_rules"}
COUPLED = ("d_model", "n_head", "head_dim")
MAX_COUPLING_COMBOS = 200_000      # every value of the coupled params is checked, up to this many
TOP_KEYS = {"description", "cpu_ok", "sampler", "pruner", "fixed", "params", "enqueue"}
PARAM_KEYS = {"low", "high", "log", "step", "choices", "values", "when"}
MAX_VALIDATION_COMBOS = 4000



@dataclass
class Param:
    name: str
    kind: type                     # int, float, bool or str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None    # categorical
    values: list | None = None     # ordered numeric choices
    when: dict[str, list] = field(default_factory=dict)

    @property
    def optuna_name(self) -> str:
        # ordered values other than evenly spaced ints are sampled as an index, kept in order
        return f"{self.name}_index" if self.values is not None and not self._int_steps() else self.name

    def _int_steps(self) -> bool:
        # Evenly spaced ints are a native stepped int range. Floats never are: optuna's float
        # step gives 0.49999999999999994 for 0.5, which no `when` or enqueued value matches.
        v = self.values or []
        return self.kind is int and len(v) >= 2 and all(b - a == v[1] - v[0] for a, b in zip(v, v[1:]))

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.values is not None:
            if self._int_steps():
                return trial.suggest_int(self.name, self.values[0], self.values[-1], step=self.values[1] - self.values[0])
            return self.values[trial.suggest_int(self.optuna_name, 0, len(self.values) - 1)]
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_optuna_value(self, value: Any) -> Any:
        """The value as the optuna param stores it (for enqueue_trial)."""
        return self.values.index(value) if self.optuna_name != self.name else value

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.values is not None:
            return value in self.values
        if not (is_number(value) and self.low <= value <= self.high):
            return False
        return self.step is None or _on_grid(value - self.low, self.step)

    def corners(self) -> list:
        """Extreme values, used to check up front that every sampled config can run."""
        if self.choices is not None:
            return list(self.choices)
        if self.values is not None:
            return list(self.values)
        return [self.kind(self.low), self.kind(self.high)]

    def count(self) -> int | None:
        """How many values this param can take; None for a continuous range."""
        if self.choices is not None or self.values is not None:
            return len(self.choices if self.choices is not None else self.values)
        if self.step is not None:
            return int(round((self.high - self.low) / self.step)) + 1
        return None

    def points(self) -> list | None:
        """Every value this param can take; None for a continuous range."""
        if self.choices is not None or self.values is not None:
            return list(self.choices if self.choices is not None else self.values)
        if self.step is not None:
            return [self.kind(self.low + i * self.step) for i in range(self.count())]
        return None

    def grid(self) -> list | None:
        if self.choices is not None or self.values is not None:
            return [self.to_optuna_value(v) for v in (self.choices or self.values)]
        return self.points()

    def describe(self) -> str:
        """One line for people: how this param is sampled, and when."""
        if self.choices is not None:
            how = "choices " + ", ".join(map(str, self.choices))
        elif self.values is not None:
            how = "values " + ", ".join(f"{v:g}" for v in self.values)
        else:
            how = f"{self.low:g} .. {self.high:g}" + (" log" if self.log else "") + \
                (f" step {self.step:g}" if self.step else "")
        when = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in self.when.items())
        return how + (f"   (when {when})" if when else "")

    def spec(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "kind" and v not in (None, False, {})} | \
            {"kind": self.kind.__name__}


@dataclass
class SearchSpace:
    path: str
    params: list[Param]
    fixed: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    enqueue: list[tuple[str, dict[str, Any]]]      # (label, optuna params)
    description: str = ""
    cpu_ok: bool = False
    text: str = ""

    # ---------------------------------------------------------------- sampling
    def suggest(self, trial: optuna.Trial, base: RunConfig) -> RunConfig:
        """Sample this trial's config. Inactive conditional params are not sampled at all."""
        values: dict[str, Any] = {**base.to_dict(), **self.fixed}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return self.to_config(values, base)

    def to_config(self, values: dict[str, Any], base: RunConfig) -> RunConfig:
        """The run config for sampled `values` (head_dim resolved into n_head)."""
        values = dict(values)
        head_dim = values.pop("head_dim", None)
        if head_dim is not None:
            # never floor: d_model // head_dim would train another head size than the one recorded
            if not head_dim_divides(values["d_model"], head_dim):
                raise SpaceError(f"{self.path}: key 'head_dim': d_model = {values['d_model']} is not a multiple "
                                 f"of head_dim = {head_dim!r}")
            values["n_head"] = values["d_model"] // head_dim
        return RunConfig.from_dict(values, base=base, source=self.path)

    def corners(self, base: RunConfig) -> typing.Iterator[dict[str, Any]]:
        """The values at the corners of the space (every choice, both ends of every range; the
        params active there), on top of `base` and `fixed`. Large spaces: a seeded random
        subset of MAX_VALIDATION_COMBOS corners."""
        corners = [p.corners() for p in self.params]
        combos: typing.Iterable = itertools.product(*corners)
        if math.prod(len(c) for c in corners) > MAX_VALIDATION_COMBOS:
            rng = random.Random(0)
            combos = ([rng.choice(c) for c in corners] for _ in range(MAX_VALIDATION_COMBOS))
        for combo in combos:
            values: dict[str, Any] = {**base.to_dict(), **self.fixed}
            for p, v in zip(self.params, combo):
                if p.active(values):
                    values[p.name] = v
            yield values

    # ---------------------------------------------------------------- study policy
    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        grid = self.grid_space() if self.sampler["name"] == "grid" else None
        return make_sampler(self.sampler, seed, grid)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.pruner)

    def with_policy(self, sampler: str | None = None, pruner: str | None = None) -> "SearchSpace":
        """This space with its sampler and/or pruner replaced by a named default (the command
        line's --sampler/--pruner). The policy is part of the space's identity (sha256)."""
        space = replace(self, sampler={"name": sampler} if sampler else self.sampler,
                                    pruner={"name": pruner} if pruner else self.pruner)
        if sampler and (missing := missing_package(sampler)):
            raise SpaceError(f"{self.path}: --sampler {sampler}: {missing}")
        if space.sampler["name"] == "grid":
            space.grid_space()
        return space

    def grid_space(self) -> dict[str, list]:
        grid = {}
        for p in self.params:
            values = p.grid()
            if values is None or p.when:
                raise SpaceError(f"{self.path}: key 'params.{p.name}': the grid sampler needs every parameter "
                                 "to be choices, values or a stepped range, with no 'when'")
            grid[p.optuna_name] = values
        return grid

    @property
    def sha256(self) -> str:
        """Identity of the space's meaning (comments and formatting do not count)."""
        canon = {"params": [p.spec() for p in self.params], "fixed": self.fixed, "sampler": self.sampler,
                 "pruner": self.pruner}
        return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------- parsing
def load_space(path: str | Path, sampler: str | None = None, pruner: str | None = None) -> SearchSpace:
    """The space file, validated; `sampler`/`pruner` (names) replace the file's policy."""
    text = read_yaml_text(path)              # read once: the text recorded is the text parsed
    return parse_space(parse_yaml_text(text, str(path)), str(path), text).with_policy(sampler, pruner)


def parse_space(data: Any, source: str = "space", text: str = "") -> SearchSpace:
    def err(key: str, message: str) -> SpaceError:
        return SpaceError(f"{source}: key '{key}': {message}")

    if not isinstance(data, dict):
        raise SpaceError(f"{source}: the top level must be a mapping with 'params' (and optionally "
                         f"{', '.join(sorted(TOP_KEYS - {'params'}))}); got {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            raise err(str(key), f"unknown top-level key; expected one of {', '.join(sorted(TOP_KEYS))}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise err("description", "must be text")
    cpu_ok = data.get("cpu_ok", False)
    if not isinstance(cpu_ok, bool):
        raise err("cpu_ok", "must be true or false")

    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise err("fixed", "must be a mapping of run-config fields")
    if "dataset" in fixed:
        raise err("fixed.dataset", "the dataset is chosen on the command line (--dataset), not in a space")
    try:
        fixed = migrate_legacy_keys(fixed, f"{source}: fixed")      # e.g. scaled_residual_init -> residual_init
        base = RunConfig.from_dict(fixed, source=f"{source}: fixed")
    except ConfigError as e:
        raise SpaceError(str(e)) from None

    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise err("params", "must be a non-empty mapping of run-config fields to sample")
    hints = typing.get_type_hints(RunConfig)
    config_fields = {f.name for f in fields(RunConfig)}
    params: list[Param] = []
    for name, spec in raw_params.items():
        params.append(_parse_param(str(name), spec, hints, config_fields, fixed, params, err))
    _check_coupling(params, err)

    sampler = parse_policy(data.get("sampler"), "sampler", SAMPLERS, DEFAULT_SAMPLER, err)
    pruner = parse_policy(data.get("pruner"), "pruner", PRUNERS, DEFAULT_PRUNER, err)
    space = SearchSpace(path=source, params=params, fixed=fixed, sampler=sampler, pruner=pruner, enqueue=[],
                        description=description, cpu_ok=cpu_ok, text=text)
    if sampler["name"] == "grid":
        space.grid_space()
    _check_heads(space, base, err)
    _check_all_runnable(space, base, err)
    space.enqueue = _parse_enqueue(data.get("enqueue"), space, base, err)
    return space


def _number(value: Any, key: str, err) -> float:
    if isinstance(value, bool):
        raise err(key, f"must be a number; got {value!r}")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise err(key, f"must be a number; got {value!r}") from None
    else:
        raise err(key, f"must be a number; got {value!r}")
    if not math.isfinite(number):
        raise err(key, f"must be a finite number; got {value!r}")
    return number


def _parse_param(name, spec, hints, config_fields, fixed, earlier, err) -> Param:
    key = f"params.{name}"
    if name == "dataset":
        raise err(key, "the data is prepared once per study; the dataset is chosen on the command line (--dataset)")
    if name in DATA_FIELDS:
        rules = " (the Mainrun rules also fix it: that needs mainrun_rules: false)" if name in MAINRUN_FIXED else ""
        raise err(key, f"the data is prepared once per study; set {name} under fixed:{rules}")
    if name in SEEDS:
        raise err(key, "a sampled seed is noise, not a hyperparameter: every trial trains on the same seed. "
                  "Set it under fixed: for a whole study, or train a config on other seeds with "
                  "mainrun-train --set train_seed=N")
    if name in NOT_SEARCHABLE:
        raise err(key, "is fixed by the Mainrun rules and cannot be searched")
    if name in LEGACY_KEYS:
        raise err(key, f"'{name}' was replaced by {', '.join(LEGACY_KEYS[name][1](True))}; sample that instead "
                  "(a study that sampled it can still be read and exported)")
    if name not in config_fields and name not in VIRTUAL:
        import difflib
        close = difflib.get_close_matches(name, sorted(config_fields | set(VIRTUAL)), n=1)
        raise err(key, "is not a run-config field" + (f" (did you mean '{close[0]}'?)" if close else ""))
    other = {"n_head": "head_dim", "head_dim": "n_head"}.get(name)
    if other and (other in fixed or any(p.name == other for p in earlier)):
        raise err(key, "n_head is derived from head_dim; sample one of them, not both (and do not fix n_head "
                  "while sampling head_dim)")
    if name in fixed:
        raise err(key, "is also in 'fixed'; a field is either fixed or sampled")
    if any(p.name == name for p in earlier):
        raise err(key, "is sampled twice")
    if not isinstance(spec, dict):
        raise err(key, "must be a mapping such as {low: 1, high: 8}, {choices: [a, b]} or {values: [1, 2, 4]}")
    unknown = set(spec) - PARAM_KEYS
    if unknown:
        raise err(f"{key}.{sorted(map(str, unknown))[0]}",
                  f"unknown key; expected some of {', '.join(sorted(PARAM_KEYS))}")
    kind = VIRTUAL.get(name) or hints[name]
    param = Param(name=name, kind=kind)

    kinds = [k for k in ("choices", "values", "low") if k in spec]
    if "high" in spec and "low" not in spec:
        raise err(key, "has 'high' but no 'low'")
    if len(kinds) != 1:
        raise err(key, "needs exactly one of: low/high (a range), choices (categorical), values (ordered numbers)")
    if "choices" in spec or "values" in spec:
        which = "choices" if "choices" in spec else "values"
        options = spec[which]
        if not isinstance(options, list) or not options:
            raise err(f"{key}.{which}", "must be a non-empty list")
        for extra in ("log", "step", "high"):
            if extra in spec:
                raise err(f"{key}.{extra}", f"does not go with '{which}'")
        checked = [_field_value(name, kind, v, f"{key}.{which}", err) for v in options]
        if len(set(map(repr, checked))) != len(checked):
            raise err(f"{key}.{which}", "has duplicate entries")
        if which == "values":
            if kind not in (int, float):
                raise err(f"{key}.values", "ordered values are for numeric fields; use 'choices'")
            if checked != sorted(checked):
                raise err(f"{key}.values", "must be in increasing order")
            param.values = checked
        else:
            param.choices = checked
    else:
        if kind not in (int, float):
            raise err(key, f"a range needs a numeric field; '{name}' is {kind.__name__}, use 'choices'")
        if "high" not in spec:
            raise err(key, "has 'low' but no 'high'")
        low, high = _number(spec["low"], f"{key}.low", err), _number(spec["high"], f"{key}.high", err)
        if kind is int and not (float(low).is_integer() and float(high).is_integer()):
            raise err(key, f"'{name}' is an integer field; low and high must be integers")
        if low >= high:
            raise err(key, f"low ({low}) must be less than high ({high})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise err(f"{key}.log", "must be true or false")
        if log and low <= 0:
            raise err(key, f"a log range needs low > 0; got low = {low}")
        step = spec.get("step")
        if step is not None:
            step = _number(step, f"{key}.step", err)
            if step <= 0:
                raise err(f"{key}.step", "must be > 0")
            if log:
                raise err(f"{key}.step", "does not go with log: true")
            if kind is int and not float(step).is_integer():
                raise err(f"{key}.step", "must be an integer for an integer field")
            if not _on_grid(high - low, step):     # optuna would quietly lower high onto the grid
                raise err(key, f"high - low ({high - low:g}) must be a multiple of step ({step:g})")
        param.low, param.high, param.log = kind(low), kind(high), log
        param.step = kind(step) if step is not None else None
        # the values must be valid for the field, at both ends
        _field_value(name, kind, param.low, f"{key}.low", err)
        _field_value(name, kind, param.high, f"{key}.high", err)

    when = spec.get("when", {})
    if not isinstance(when, dict) or ("when" in spec and not when):
        raise err(f"{key}.when", "must be a mapping such as {optimizer: sgd}")
    by_name = {p.name: p for p in earlier}
    for cond, allowed in when.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if cond in by_name:
            options = by_name[cond].choices or by_name[cond].values
            if options is None:
                raise err(f"{key}.when.{cond}", f"'{cond}' is a range; conditions need a choices/values parameter")
            missing = [v for v in allowed if v not in options]
            if missing:
                raise err(f"{key}.when.{cond}", f"{missing[0]!r} is not one of {cond}'s choices {options}")
        elif cond in fixed or cond in config_fields:
            raise err(f"{key}.when.{cond}", f"'{cond}' is not sampled before '{name}'; "
                      "a condition must name a parameter listed earlier in 'params'")
        else:
            raise err(f"{key}.when.{cond}", f"'{cond}' is not a parameter of this space")
        param.when[str(cond)] = allowed
    return param


def _field_value(name: str, kind: type, value: Any, key: str, err) -> Any:
    """Check one candidate value against the run-config field (type and allowed range)."""
    if kind in (int, float):
        number = _number(value, key, err)
        if kind is int and not float(number).is_integer():
            raise err(key, f"{value!r} is not an integer")
        value = kind(number)
    if name in VIRTUAL:
        if value <= 0:
            raise err(key, f"must be positive; got {value}")
        return value
    try:
        return check_field(name, value)
    except ConfigError as e:
        raise err(key, f"{value!r} is not a valid value ({str(e).split(': ', 1)[-1]})") from None


def _on_grid(offset: float, step: float) -> bool:
    """Whether `offset` is a whole number of `step`s (to float rounding)."""
    n = offset / step
    return math.isclose(n, round(n), rel_tol=0, abs_tol=1e-9 * max(1.0, abs(n)))


def head_dim_divides(d_model: int, head_dim: Any) -> bool:
    """Whether `head_dim` is a head size for `d_model`: a positive integer that divides it."""
    return is_int(head_dim) and head_dim > 0 and d_model % head_dim == 0


def _check_coupling(params: list[Param], err) -> None:
    names = {p.name: p for p in params}
    if any(names[n].choices is None and names[n].values is None and names[n].step is None
           for n in COUPLED if n in names):
        raise err("params.d_model", "d_model, n_head and head_dim must be choices, values or stepped ranges, "
                  "so that d_model % n_head == 0 can be guaranteed before any trial runs")


def _check_heads(space: SearchSpace, base: RunConfig, err) -> None:
    """Every d_model the space can give against every n_head or head_dim it can give with it
    (and pos_emb, for rope's even heads): corners alone miss the middle of a stepped range,
    such as n_head 6 of {low: 2, high: 8, step: 2} with d_model 32. The coupled params are
    finite (_check_coupling), and so are the choices/values params their `when` names."""
    by_name = {p.name: p for p in space.params}
    need = {n for n in COUPLED if n in by_name}
    if not need:
        return
    need |= {"pos_emb"} & set(by_name)
    while True:
        wider = need | {c for n in need for c in by_name[n].when}
        if wider == need:
            break
        need = wider
    chosen = [p for p in space.params if p.name in need]
    if math.prod(p.count() for p in chosen) > MAX_COUPLING_COMBOS:     # counted, not listed: a range may be huge
        raise err("params.d_model", f"more than {MAX_COUPLING_COMBOS:,} combinations of d_model, n_head/head_dim "
                  "and their conditions to check; use fewer values")
    points = [p.points() for p in chosen]
    seen = set()
    start = {**base.to_dict(), **space.fixed}
    for combo in itertools.product(*points):
        values: dict[str, Any] = dict(start)
        for p, v in zip(chosen, combo):
            if p.active(values):
                values[p.name] = v
        heads = tuple(values.get(n) for n in (*COUPLED, "pos_emb"))
        if heads not in seen:
            seen.add(heads)
            _check_pair(values, by_name, err)
            _build(space, values, base, err)


def _check_pair(values: dict[str, Any], by_name: dict[str, Param], err) -> None:
    d_model, head_dim = values["d_model"], values.get("head_dim")
    if head_dim is not None and not head_dim_divides(d_model, head_dim):
        raise err("params.head_dim", f"d_model = {d_model} is not a multiple of head_dim = {head_dim}; "
                  "choose values so that every pair divides")
    if head_dim is None and d_model % values["n_head"]:
        key = "params.n_head" if "n_head" in by_name else "params.d_model"
        raise err(key, f"d_model = {d_model} is not a multiple of n_head = {values['n_head']}; "
                  "choose values so that every pair divides")


def _build(space: SearchSpace, values: dict[str, Any], base: RunConfig, err) -> None:
    try:
        space.to_config(values, base)
    except ConfigError as e:
        sampled = {p.name: values[p.name] for p in space.params if p.active(values) and p.name in values}
        raise err("params", f"this combination cannot run: {sampled} -> {str(e).split(': ', 1)[-1]}") from None


def _check_all_runnable(space: SearchSpace, base: RunConfig, err) -> None:
    """Build the configs at the corners of the space and refuse the file if any of them
    cannot run."""
    for values in space.corners(base):
        _build(space, values, base, err)


def _parse_enqueue(raw: Any, space: SearchSpace, base: RunConfig, err) -> list[tuple[str, dict[str, Any]]]:
    """Each entry is a preset name or a mapping of param values (a preset may be named with
    'preset:' and overridden, an earlier entry with 'like:', which is how an ablation spells its
    variants: the base once, then each variant as its change). Every entry must be a point of
    this space, so the trial that runs is exactly the one asked for."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise err("enqueue", "must be a list of preset names or mappings of parameter values")
    entries = []
    wanted_by_label: dict[str, dict[str, Any]] = {}      # for 'like:'
    for i, item in enumerate(raw):
        key = f"enqueue[{i}]"
        if isinstance(item, str):
            item = {"preset": item}
        if not isinstance(item, dict):
            raise err(key, "must be a preset name or a mapping of parameter values")
        item = dict(item)
        preset = item.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise err(f"{key}.preset", f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        label = item.pop("label", None)
        if label is not None and not isinstance(label, str):
            raise err(f"{key}.label", "must be a string")
        like = item.pop("like", None)
        if like is not None and preset is not None:
            raise err(key, "give preset or like, not both")
        if like is not None and like not in wanted_by_label:
            raise err(f"{key}.like", f"{like!r} is not the label of an earlier entry; earlier: "
                      + (", ".join(wanted_by_label) or "none"))
        label = label or preset or f"enqueue[{i}]"
        start = wanted_by_label[like] if like is not None else {**space.fixed, **PRESETS.get(preset, {})}
        try:
            wanted = RunConfig.from_dict({**start, **{k: v for k, v in item.items() if k not in VIRTUAL}},
                                         base=base, source="").to_dict()
        except ConfigError as e:
            raise err(key, str(e).lstrip(": ")) from None
        if "head_dim" in item:
            head_dim = item["head_dim"]
            if not head_dim_divides(wanted["d_model"], head_dim):
                raise err(key, f"{label} has head_dim = {head_dim!r}, which must be a positive integer that "
                          f"divides d_model = {wanted['d_model']}")
            wanted["n_head"] = wanted["d_model"] // head_dim
        values: dict[str, Any] = {**base.to_dict(), **space.fixed}
        optuna_params: dict[str, Any] = {}
        for p in space.params:
            if not p.active(values):
                continue
            value = wanted["d_model"] // wanted["n_head"] if p.name == "head_dim" else wanted[p.name]
            if not p.contains(value):
                raise err(key, f"{label} has {p.name} = {value!r}, which is outside this space's "
                          f"'{p.name}' ({p.describe()})")
            values[p.name] = value
            optuna_params[p.optuna_name] = p.to_optuna_value(value)
        got = space.to_config(values, base).to_dict()
        differ = {k: (wanted[k], got[k]) for k in wanted if wanted[k] != got[k]}
        if differ:
            k, (want, have) = next(iter(differ.items()))
            raise err(key, f"{label} needs {k} = {want!r}, but this space fixes it at {have!r} "
                      "(sample it, or drop the entry)")
        same = [j for j, (_, earlier) in enumerate(entries) if earlier == optuna_params]
        if same:   # it would run twice, or be skipped and miscounted
            raise err(key, f"{label} is the same trial as enqueue[{same[0]}]; drop one of them")
        entries.append((label, optuna_params))
        wanted_by_label[label] = wanted
    return entries
