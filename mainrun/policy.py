"""The study policy a search space names: which samplers and pruners there are (optuna's, with
mainrun's defaults), checking a space file's options against the optuna class before anything
runs, and building them.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

import optuna

from .config import is_int, is_number

# What a space file that names no sampler / pruner gets.
DEFAULT_SAMPLER, DEFAULT_PRUNER = "tpe", "median"
SAMPLERS = {
    "tpe": (optuna.samplers.TPESampler, {"multivariate": True, "constant_liar": True}),
    "random": (optuna.samplers.RandomSampler, {}),
    "cmaes": (optuna.samplers.CmaEsSampler, {}),
    "gp": (optuna.samplers.GPSampler, {}),
    "grid": (optuna.samplers.GridSampler, {}),
}
# Packages a sampler imports only when it first samples, i.e. mid-search: checked at load.
SAMPLER_NEEDS = {"cmaes": ("cmaes",), "gp": ("scipy", "torch")}


class PatientMedianPruner(optuna.pruners.PatientPruner):
    """The median rule, made patient: a trial below the median is pruned only once its validation
    loss has not improved for `patience` evaluations, so a slow starter that still improves runs
    on. Optuna's PatientPruner around its MedianPruner, with the median's options."""

    def __init__(self, patience: int = 3, min_delta: float = 0.0, n_startup_trials: int = 5,
                 n_warmup_steps: int = 3, interval_steps: int = 1, n_min_trials: int = 1):
        median = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps,
                                             interval_steps=interval_steps, n_min_trials=n_min_trials)
        with warnings.catch_warnings():          # experimental in optuna 5; said once here, not per worker
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(median, patience=patience, min_delta=min_delta)


# Pruner steps are evaluation indices (0 = step 1, then every batches_per_epoch // 3 steps):
# about the same progress points for every trial whatever its batch size. Warm-up 3 = the
# first epoch (to within a step or two when the batches per epoch are not a multiple of 3).
PRUNERS = {
    "median": (optuna.pruners.MedianPruner, {"n_startup_trials": 5, "n_warmup_steps": 3}),
    "percentile": (optuna.pruners.PercentilePruner, {"percentile": 50.0, "n_startup_trials": 5, "n_warmup_steps": 3}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {"min_resource": 3}),
    "hyperband": (optuna.pruners.HyperbandPruner, {"min_resource": 3}),
    "patient": (PatientMedianPruner, {}),         # its signature holds mainrun's defaults
    "none": (optuna.pruners.NopPruner, {}),
}


def make_sampler(spec: dict[str, Any], seed: int | None = None,
                 grid: dict[str, list] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler `spec` ({name, options...}) names; `grid` is the grid sampler's search space."""
    cls, defaults = SAMPLERS[spec["name"]]
    options = {**defaults, **{k: v for k, v in spec.items() if k != "name"}}
    if grid is not None:
        options["search_space"] = grid
    if "seed" in inspect.signature(cls).parameters and seed is not None:
        options["seed"] = seed
    return cls(**options)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    cls, defaults = PRUNERS[spec["name"]]
    return cls(**{**defaults, **{k: v for k, v in spec.items() if k != "name"}})


def parse_policy(raw: Any, key: str, table: dict, default: str, err) -> dict[str, Any]:
    """A space file's `sampler:` or `pruner:` (a name, or a mapping with 'name' and options), checked
    against the optuna class it names; `err(key, message)` makes the error that names the key."""
    if raw is None:
        return {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise err(key, f"must be a name ({', '.join(table)}) or a mapping with 'name' and options")
    name = raw.get("name", default)
    if name not in table:
        raise err(f"{key}.name", f"unknown {key} {name!r}; known: {', '.join(table)}")
    if key == "sampler" and (missing := missing_package(name)):
        raise err(f"{key}.name", missing)
    cls, defaults = table[name]
    owner = f"optuna's {cls.__name__}" if cls.__module__.startswith("optuna") else f"mainrun's {cls.__name__}"
    signature = inspect.signature(cls).parameters
    accepted = set(signature) - {"seed", "search_space"}
    for option in raw:
        if option != "name" and option not in accepted:
            raise err(f"{key}.{option}", f"not an option of {owner} "
                      f"(options: {', '.join(sorted(accepted)) or 'none'})")
        if option != "name":
            _check_option_type(raw[option], signature[option].default, defaults.get(option), f"{key}.{option}", err)
    try:
        cls(**{k: v for k, v in raw.items() if k != "name"}, **({"search_space": {"x": [0]}} if name == "grid" else {}))
    except Exception as e:  # optuna validates its own options; pass its sentence on
        raise err(key, f"{owner} refused these options: {e}") from None
    return {"name": name, **{k: v for k, v in raw.items() if k != "name"}}


def missing_package(sampler: str) -> str | None:
    """What to install for `sampler`, if an optional package it imports is missing."""
    for package in SAMPLER_NEEDS.get(sampler, ()):
        try:
            importlib.import_module(package)
        except ImportError:
            return f"the {sampler} sampler needs the '{package}' package, which is not installed: pip install {package}"
    return None


def _check_option_type(value: Any, default: Any, ours: Any, key: str, err) -> None:
    """Optuna checks few option types itself, so a wrong one fails mid-search. The type is the
    signature default's (or, where that is None or missing, the default we pass)."""
    if default is None and value is None:
        return
    example = ours if default is None or default is inspect.Parameter.empty else default
    if isinstance(example, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(example, int):
        ok, what = is_int(value), "an integer"
    elif isinstance(example, float):
        ok, what = is_number(value), "a number"
    else:
        return
    if not ok:
        raise err(key, f"must be {what}; got {value!r}")
