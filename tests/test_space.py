"""The YAML search-space format: parsing, every refusal, conditionals, couplings, enqueue."""
from __future__ import annotations

import subprocess
import sys
import types

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT, SPACES, cli
from mainrun.config import ConfigError, RunConfig
from mainrun.space import SpaceError, load_space, parse_space

MINIMAL = {"params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}


def parse(doc: dict | str) -> object:
    data = yaml.safe_load(doc) if isinstance(doc, str) else doc
    return parse_space(data, "space.yaml")


def sample(space, n: int = 30, seed: int = 0) -> list[tuple[dict, RunConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = space.suggest(trial, RunConfig())
        out.append((dict(trial.params), cfg))
        study.tell(trial, 1.0)
    return out


def test_the_guides_example_space_is_a_valid_space():
    import re
    guide = (ROOT / "docs" / "search-spaces.md").read_text()
    example = re.search(r"```yaml\n(description: what this space is for.*?)```", guide, re.S)
    space = parse(example.group(1))
    assert [label for label, _ in space.enqueue] == ["baseline", "fast-adamw"]
    assert {p.name for p in space.params} >= {"schedule", "warmup_steps", "head_dim", "momentum"}


@pytest.mark.parametrize("name", ["arch", "optim", "smoke"])
def test_shipped_spaces_parse_and_sample_runnable_configs(name):
    space = load_space(SPACES / f"{name}.yaml")
    for _params, cfg in sample(space, 40):
        assert cfg.d_model % cfg.n_head == 0
    assert space.sha256 == load_space(SPACES / f"{name}.yaml").sha256


def test_arch_enqueues_baseline_both_reports_and_the_best_so_far():
    space = load_space(SPACES / "arch.yaml")
    assert [label for label, _ in space.enqueue] == ["baseline", "report-000", "report-003", "best-standin"]
    study = optuna.create_study()
    for _, params in space.enqueue:
        study.enqueue_trial(params)
    cfgs = []
    for _ in space.enqueue:
        trial = study.ask()
        cfgs.append(space.suggest(trial, RunConfig()))
        study.tell(trial, 1.0)
    base, r000, r003, best = cfgs
    assert base == RunConfig()                                    # exactly the Mainrun baseline
    assert (r000.optimizer, r000.lr, r000.beta2, r000.weight_decay, r000.warmup_steps) == ("adamw", 3e-4, 0.95, 0.1, 100)
    assert (r003.d_model, r003.n_head, r003.n_layer, r003.mlp) == (1024, 16, 8, "swiglu")
    # the checked-in best config, its floats to the 4 or 5 digits the space file writes
    checked_in = RunConfig.from_yaml(ROOT / "studies" / "best-standin.yaml")
    for name in ("optimizer", "beta2", "decay_all", "d_model", "n_head", "n_layer", "mlp", "pos_emb", "qk_norm",
                 "schedule", "warmup_steps"):
        assert getattr(best, name) == getattr(checked_in, name), name
    for name in ("lr", "weight_decay", "dropout"):
        assert getattr(best, name) == pytest.approx(getattr(checked_in, name), rel=1e-3), name


def test_conditional_params_are_sampled_only_when_active():
    space = parse({"params": {
        "optimizer": {"choices": ["sgd", "adamw"]},
        "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
        "beta2": {"choices": [0.95, 0.999], "when": {"optimizer": "adamw"}},
    }})
    seen = set()
    for params, cfg in sample(space, 40):
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert ("beta2" in params) == (params["optimizer"] == "adamw")
        if params["optimizer"] == "adamw":
            assert cfg.momentum == RunConfig().momentum            # inactive: the default stays
    assert seen == {"sgd", "adamw"}


def test_head_dim_coupling_gives_divisible_heads():
    space = parse({"params": {"d_model": {"values": [256, 384, 512]}, "head_dim": {"values": [32, 64, 128]}}})
    for params, cfg in sample(space, 40):
        assert cfg.d_model % cfg.n_head == 0
        assert cfg.head_dim in (32, 64, 128)
        assert "head_dim_index" in params                          # 32/64/128 is ordered, not evenly spaced


def test_ordered_values_keep_their_order_for_the_sampler():
    space = parse({"params": {"d_model": {"values": [256, 384, 512]}, "beta2": {"values": [0.9, 0.99, 0.999]}}})
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial, RunConfig())
    dists = trial.distributions
    assert isinstance(dists["d_model"], optuna.distributions.IntDistribution)     # evenly spaced: native
    assert dists["d_model"].step == 128
    assert isinstance(dists["beta2_index"], optuna.distributions.IntDistribution)  # uneven: ordered index


def test_fixed_values_apply_to_every_trial():
    space = parse({"fixed": {"dropout": 0.0, "mlp": "swiglu"}, **MINIMAL})
    assert all(cfg.dropout == 0.0 and cfg.mlp == "swiglu" for _, cfg in sample(space, 5))


def test_sampler_and_pruner_options_reach_optuna():
    space = parse({**MINIMAL, "sampler": {"name": "tpe", "n_startup_trials": 3},
                   "pruner": {"name": "hyperband", "reduction_factor": 2}})
    assert isinstance(space.make_sampler(seed=1), optuna.samplers.TPESampler)
    assert isinstance(space.make_pruner(), optuna.pruners.HyperbandPruner)
    assert isinstance(parse(MINIMAL).make_pruner(), optuna.pruners.MedianPruner)       # the default
    grid = parse({"params": {"mlp": {"choices": ["gelu", "swiglu"]}, "n_layer": {"low": 2, "high": 4, "step": 2}},
                  "sampler": "grid"})
    assert grid.grid_space() == {"mlp": ["gelu", "swiglu"], "n_layer": [2, 4]}


def _study_with_curves(curves: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(value=curve[-1], intermediate_values=dict(enumerate(curve))))
    return study


def test_the_patient_pruner_lets_an_improving_trial_below_the_median_run_on():
    """`patient`: the median rule, applied only once a trial has stopped improving for `patience`
    evaluations. Two trials that sit above (worse than) every complete trial's curve: the one
    still falling runs on, the one that has stalled is pruned; the plain median prunes both."""
    space = parse({**MINIMAL, "pruner": {"name": "patient", "patience": 2, "n_startup_trials": 2,
                                         "n_warmup_steps": 1}})
    patient, median = space.make_pruner(), parse({**MINIMAL, "pruner": {"name": "median", "n_startup_trials": 2,
                                                                        "n_warmup_steps": 1}}).make_pruner()
    study = _study_with_curves([[3.0, 2.0, 1.5, 1.2, 1.0, 0.9]] * 3)
    verdicts = {}
    for name, curve in (("falling", [4.0, 3.6, 3.2, 2.9, 2.6]), ("stalled", [4.0, 3.0, 3.1, 3.05, 3.2])):
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        verdicts[name] = (patient.prune(study, frozen), median.prune(study, frozen))
    assert verdicts == {"falling": (False, True), "stalled": (True, True)}


def test_the_patient_pruners_options_are_checked_at_load():
    with pytest.raises(SpaceError, match=r"'pruner.wrapped_pruner': not an option of mainrun's PatientMedianPruner"):
        parse({**MINIMAL, "pruner": {"name": "patient", "wrapped_pruner": "median"}})
    with pytest.raises(SpaceError, match=r"'pruner.patience': must be an integer"):
        parse({**MINIMAL, "pruner": {"name": "patient", "patience": 1.5}})
    with pytest.raises(SpaceError, match=r"refused these options: .*patience"):
        parse({**MINIMAL, "pruner": {"name": "patient", "patience": -1}})


@pytest.mark.parametrize("doc, key, words", [
    ({"params": {"lr": {"low": 1e-2, "high": 1e-4}}}, "params.lr", "less than"),
    ({"params": {"lr": {"low": 0.0, "high": 1e-2, "log": True}}}, "params.lr", "low > 0"),
    ({"params": {"mlp": {"choices": []}}}, "params.mlp.choices", "non-empty"),
    ({"params": {"lernrate": {"low": 1, "high": 2}}}, "params.lernrate", "not a run-config field"),
    ({"params": {"epochs": {"low": 1, "high": 9}}}, "params.epochs", "Mainrun rules"),
    ({"params": {"seed": {"choices": [1, 2]}}}, "params.seed", "Mainrun rules"),
    ({"params": {"seed": {"choices": [1, 2]}}}, "params.seed", "data is prepared once per study"),
    ({"fixed": {"epochs": 3}, **MINIMAL}, "epochs", "mainrun_rules"),
    ({"params": {"n_layer": {"low": 1.5, "high": 4}}}, "params.n_layer", "integer"),
    ({"params": {"lr": {"low": "fast", "high": 1}}}, "params.lr.low", "number"),
    ({"params": {"lr": {"low": 1e-4}}}, "params.lr", "no 'high'"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2, "choices": [1]}}}, "params.lr", "exactly one"),
    ({"params": {"mlp": {"choices": ["gelu", "mamba"]}}}, "params.mlp.choices", "not a valid value"),
    ({"params": {"mlp": {"low": 1, "high": 2}}}, "params.mlp", "numeric"),
    ({"params": {"d_model": {"values": [512, 256]}}}, "params.d_model.values", "increasing"),
    ({"params": {"momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}}}}, "params.momentum.when.optimizer",
     "not sampled before"),
    ({"params": {"optimizer": {"choices": ["sgd"]}, "momentum": {"low": 0, "high": 0.5, "when": {"optimizer": "lion"}}}},
     "params.momentum.when.optimizer", "not one of"),
    ({"params": {"d_model": {"values": [256, 320]}, "head_dim": {"values": [64, 128]}}}, "params.head_dim",
     "not a multiple"),
    ({"params": {"d_model": {"low": 256, "high": 1024}, "n_head": {"choices": [4, 8]}}}, "params.d_model",
     "stepped"),
    ({"params": {"momentum": {"low": 0.0, "high": 0.9}, "nesterov": {"choices": [True, False]}}}, "params",
     "cannot run"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "sampler": {"name": "annealing"}}, "sampler.name", "unknown"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "sampler": {"name": "tpe", "bogus": 1}}, "sampler.bogus",
     "not an option"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "pruner": {"name": "median", "n_startup_trials": -1}}, "pruner",
     "refused"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "enqueue": ["report-999"]}, "enqueue[0].preset", "unknown preset"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-3}}, "enqueue": ["baseline"]}, "enqueue[0]", "outside"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "enqueue": ["report-000"]}, "enqueue[0]", "fixes it"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "enqueue": [{"lr": 1e-3, "label": 3}]}, "enqueue[0].label", "must be a string"),
    ({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "colour": "blue"}, "colour", "unknown top-level"),
    ({"params": {}}, "params", "non-empty"),
    ({"fixed": {"dataset": "x.txt"}, **MINIMAL}, "fixed.dataset", "command line"),
    ({"params": {"grad_accum_steps": {"values": [0, 2]}}}, "params.grad_accum_steps.values", "not a valid value"),
    ({"params": {"init": {"choices": ["normal", "xavier"]}}}, "params.init.choices", "not a valid value"),
    ({"params": {"residual_init": {"choices": [True, False]}}}, "params.residual_init.choices", "not a valid value"),
    ({"params": {"schedule": {"choices": ["constant", "linear"]}, "min_lr_frac": {"low": 0.0, "high": 0.2}}},
     "params", "cannot run"),
    ({"params": {"train_seed": {"choices": [1, 2]}}}, "params.train_seed", "a sampled seed is noise"),
    ({"params": {"scaled_residual_init": {"choices": [True, False]}}}, "params.scaled_residual_init",
     "replaced by residual_init"),
    ({"fixed": {"scaled_residual_init": True, "residual_init": "zero"}, **MINIMAL}, "scaled_residual_init",
     "keep only residual_init"),
    ([1, 2, 3], None, "top level must be a mapping"),
])
def test_every_refusal_names_the_file_and_key(doc, key, words):
    with pytest.raises(SpaceError) as info:
        parse(doc)
    message = str(info.value)
    assert message.startswith("space.yaml")
    if key:
        assert f"'{key}'" in message or key in message
    assert words in message


def test_grid_sampler_refuses_continuous_ranges():
    with pytest.raises(SpaceError, match="grid sampler"):
        parse({"params": {"lr": {"low": 1e-4, "high": 1e-2}}, "sampler": "grid"})


def test_space_identity_ignores_comments_but_not_meaning(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("# comment\nparams:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    b = tmp_path / "b.yaml"
    b.write_text("params:\n  lr:\n    low: 0.0001\n    high: 0.01\n    log: true\n")
    c = tmp_path / "c.yaml"
    c.write_text("params:\n  lr: {low: 1.0e-4, high: 2.0e-2, log: true}\n")
    assert load_space(a).sha256 == load_space(b).sha256 != load_space(c).sha256


# ---------------------------------------------------------------------- data fields
@pytest.mark.parametrize("name, options", [
    ("vocab_size", [300, 600]), ("num_titles", [1000, 2000]), ("val_frac", [0.1, 0.2]), ("seed", [1, 2]),
])
def test_fields_read_only_by_the_data_preparation_are_refused_as_params(name, options):
    # mainrun_rules: false lifts the rules, not the once-per-study data
    with pytest.raises(SpaceError, match=rf"'params.{name}'.*data is prepared once per study; set {name} under fixed:"):
        parse({"fixed": {"mainrun_rules": False}, "params": {name: {"choices": options}}})


def test_a_sampled_dataset_is_refused():
    with pytest.raises(SpaceError, match="'params.dataset'.*--dataset"):
        parse({"params": {"dataset": {"choices": ["a.txt", "b.txt"]}}})


def test_vocab_size_under_fixed_still_applies():
    space = parse({"fixed": {"mainrun_rules": False, "vocab_size": 300, "num_titles": 1000}, **MINIMAL})
    assert all((cfg.vocab_size, cfg.num_titles) == (300, 1000) for _, cfg in sample(space, 3))


# ---------------------------------------------------------------------- the newer knobs
def test_accumulation_init_and_the_constant_schedule_are_searchable():
    space = parse({"params": {
        "batch_size": {"values": [16, 32, 64]},
        "grad_accum_steps": {"values": [1, 2, 4]},
        "init": {"choices": ["normal", "kaiming"]},
        "residual_init": {"choices": ["same", "scaled", "zero"]},
        "schedule": {"choices": ["constant", "warmup_cosine"]},
        "warmup_steps": {"low": 0, "high": 200, "step": 50, "when": {"schedule": ["constant", "warmup_cosine"]}},
    }, "enqueue": [{"label": "accumulated", "batch_size": 16, "grad_accum_steps": 4, "init": "kaiming",
                    "residual_init": "zero", "schedule": "constant", "warmup_steps": 100}]})
    seen = {name: set() for name in ("grad_accum_steps", "init", "residual_init", "schedule")}
    for _, cfg in sample(space, 40):
        assert cfg.batch_size in (16, 32, 64)
        for name, values in seen.items():
            values.add(getattr(cfg, name))
    assert seen == {"grad_accum_steps": {1, 2, 4}, "init": {"normal", "kaiming"},
                    "residual_init": {"same", "scaled", "zero"}, "schedule": {"constant", "warmup_cosine"}}
    [(label, params)] = space.enqueue
    cfg = space.suggest(optuna.trial.FixedTrial(params), RunConfig())
    assert (cfg.batch_size, cfg.grad_accum_steps, cfg.schedule, cfg.warmup_steps) == (16, 4, "constant", 100)


def test_a_train_seed_or_an_old_key_under_fixed_applies_to_every_trial():
    space = parse({"fixed": {"train_seed": 3, "scaled_residual_init": True}, **MINIMAL})
    assert space.fixed == {"train_seed": 3, "residual_init": "scaled"}
    assert all((cfg.train_seed, cfg.residual_init, cfg.official) == (3, "scaled", False) for _, cfg in sample(space, 3))


# ---------------------------------------------------------------------- heads and width, every value
@pytest.mark.parametrize("doc, key, pair", [
    ({"params": {"d_model": {"values": [32, 64]}, "head_dim": {"low": 8, "high": 32, "step": 8}}},
     "params.head_dim", "d_model = 32 is not a multiple of head_dim = 24"),
    ({"fixed": {"d_model": 32}, "params": {"n_head": {"low": 2, "high": 8, "step": 2}}},
     "params.n_head", "d_model = 32 is not a multiple of n_head = 6"),
    ({"fixed": {"n_head": 16}, "params": {"d_model": {"low": 32, "high": 64, "step": 8}}},
     "params.d_model", "d_model = 40 is not a multiple of n_head = 16"),
    # head_dim only for one width: the other width meets the base n_head (8)
    ({"params": {"d_model": {"values": [36, 64]}, "head_dim": {"values": [4], "when": {"d_model": 64}}}},
     "params.d_model", "d_model = 36 is not a multiple of n_head = 8"),
])
def test_every_width_and_head_value_is_checked_not_only_the_corners(doc, key, pair):
    with pytest.raises(SpaceError) as info:
        parse(doc)
    assert f"'{key}'" in str(info.value) and pair in str(info.value)


def test_stepped_head_dim_that_divides_every_width_trains_the_recorded_head_dim():
    space = parse({"params": {"d_model": {"values": [192, 384]}, "head_dim": {"low": 16, "high": 64, "step": 16}}})
    seen = set()
    for params, cfg in sample(space, 40):
        assert cfg.head_dim == params["head_dim"] and cfg.d_model % cfg.n_head == 0
        seen.add(params["head_dim"])
    assert 48 in seen


def test_rope_with_an_odd_head_dim_in_the_middle_of_a_range_is_refused():
    with pytest.raises(SpaceError, match="cannot run.*rope"):
        parse({"fixed": {"pos_emb": "rope", "n_head": 4}, "params": {"d_model": {"low": 32, "high": 48, "step": 4}}})


@pytest.mark.parametrize("doc", [
    {"params": {"n_head": {"choices": [4, 8]}, "head_dim": {"values": [32, 64]}}},
    {"fixed": {"n_head": 4}, "params": {"head_dim": {"values": [32, 64]}}},
])
def test_n_head_and_head_dim_cannot_both_be_set(doc):
    with pytest.raises(SpaceError, match="sample one of them"):
        parse(doc)


def test_to_config_never_floors_a_head_dim_that_does_not_divide():
    space = parse({"params": {"d_model": {"values": [64, 128]}, "head_dim": {"values": [16, 32]}}})
    with pytest.raises(ConfigError, match="not a multiple"):
        space.to_config({**RunConfig().to_dict(), "d_model": 64, "head_dim": 24}, RunConfig())


# ---------------------------------------------------------------------- float values
def test_evenly_spaced_float_values_are_sampled_exactly_and_conditions_on_them_fire():
    space = parse({"fixed": {"schedule": "linear"}, "params": {
        "min_lr_frac": {"values": [0.1, 0.3, 0.5]},
        "warmup_steps": {"low": 0, "high": 100, "step": 50, "when": {"min_lr_frac": 0.5}},
    }})
    seen = set()
    for params, cfg in sample(space, 40):
        assert "min_lr_frac_index" in params and "min_lr_frac" not in params     # an ordered index, no float step
        assert cfg.min_lr_frac in (0.1, 0.3, 0.5)
        assert ("warmup_steps" in params) == (cfg.min_lr_frac == 0.5)
        seen.add(cfg.min_lr_frac)
    assert seen == {0.1, 0.3, 0.5}


# ---------------------------------------------------------------------- sampler and pruner checks
@pytest.mark.parametrize("sampler, package", [("cmaes", "cmaes"), ("gp", "scipy"), ("gp", "torch")])
def test_a_sampler_whose_package_is_missing_is_refused_at_load(sampler, package, monkeypatch, tmp_path):
    for other in {"cmaes", "scipy"} - {package}:                    # present or not here, they import
        monkeypatch.setitem(sys.modules, other, types.ModuleType(other))
    monkeypatch.setitem(sys.modules, package, None)                 # "import <package>" now fails
    with pytest.raises(SpaceError, match=rf"'sampler.name'.*pip install {package}"):
        parse({**MINIMAL, "sampler": {"name": sampler}})
    path = tmp_path / "space.yaml"
    path.write_text("params: {lr: {low: 1.0e-4, high: 1.0e-2}}\n")
    with pytest.raises(SpaceError, match=rf"--sampler {sampler}.*pip install {package}"):
        load_space(path, sampler=sampler)


@pytest.mark.parametrize("sampler", ["cmaes", "gp"])
def test_a_sampler_whose_packages_import_is_accepted(sampler, monkeypatch):
    for package in ("cmaes", "scipy"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    assert parse({**MINIMAL, "sampler": {"name": sampler}}).sampler == {"name": sampler}


@pytest.mark.parametrize("policy, key", [
    ({"sampler": {"name": "tpe", "n_startup_trials": "ten"}}, "sampler.n_startup_trials"),
    ({"sampler": {"name": "tpe", "n_startup_trials": 2.5}}, "sampler.n_startup_trials"),
    ({"sampler": {"name": "tpe", "n_ei_candidates": True}}, "sampler.n_ei_candidates"),     # a bool is not an int
    ({"sampler": {"name": "tpe", "constant_liar": 1}}, "sampler.constant_liar"),
    ({"sampler": {"name": "tpe", "multivariate": "yes"}}, "sampler.multivariate"),           # our default: True
    ({"pruner": {"name": "median", "n_warmup_steps": "3"}}, "pruner.n_warmup_steps"),
    ({"pruner": {"name": "percentile", "percentile": "half"}}, "pruner.percentile"),
])
def test_policy_options_of_the_wrong_type_are_refused_with_the_key(policy, key):
    with pytest.raises(SpaceError, match=rf"'{key}': must be"):
        parse({**MINIMAL, **policy})


def test_policy_options_of_the_right_type_pass():
    space = parse({**MINIMAL, "sampler": {"name": "tpe", "n_startup_trials": 3, "multivariate": False},
                   "pruner": {"name": "percentile", "percentile": 25, "n_warmup_steps": 2}})   # an int for a float
    assert isinstance(space.make_sampler(seed=0), optuna.samplers.TPESampler)
    assert isinstance(space.make_pruner(), optuna.pruners.PercentilePruner)


# ---------------------------------------------------------------------- enqueue
HEADS = {"params": {"d_model": {"values": [32, 64]}, "head_dim": {"values": [8, 16]}}}


@pytest.mark.parametrize("head_dim", [0, -8, "wide", None, True, 2.5, 24])
def test_an_enqueued_head_dim_that_cannot_be_is_a_space_error(head_dim):
    with pytest.raises(SpaceError, match=r"'enqueue\[0\]"):
        parse({**HEADS, "enqueue": [{"d_model": 32, "head_dim": head_dim}]})


def test_an_enqueued_value_off_a_stepped_grid_is_refused():
    doc = {"fixed": {"schedule": "linear"}, "params": {"warmup_steps": {"low": 0, "high": 100, "step": 50},
                                                       "dropout": {"low": 0.0, "high": 0.3, "step": 0.1}}}
    assert parse({**doc, "enqueue": [{"warmup_steps": 50, "dropout": 0.2}]}).enqueue     # on the grid (0.2 is 2 * 0.1)
    for entry in ({"warmup_steps": 25, "dropout": 0.2}, {"warmup_steps": 50, "dropout": 0.15}):
        with pytest.raises(SpaceError, match=r"'enqueue\[0\]'.*outside"):
            parse({**doc, "enqueue": [entry]})


def test_a_stepped_range_whose_high_is_off_the_grid_is_refused():
    # optuna would quietly lower high to 90, so the space's stated high is never sampled
    with pytest.raises(SpaceError, match="'params.warmup_steps'.*multiple of step"):
        parse({"fixed": {"schedule": "linear"}, "params": {"warmup_steps": {"low": 0, "high": 100, "step": 30}}})


@pytest.mark.parametrize("enqueue", [
    [{"lr": 1.0e-3}, {"lr": 1.0e-3, "label": "again"}],
    ["baseline", {"label": "also-baseline"}],
])
def test_duplicate_enqueue_entries_are_refused(enqueue):
    with pytest.raises(SpaceError, match=r"'enqueue\[1\]'.*same trial as enqueue\[0\]"):
        parse({"params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "enqueue": enqueue})


LIKE = {"fixed": {"optimizer": "adamw", "schedule": "warmup_cosine"},
        "params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "warmup_steps": {"values": [100, 200]},
                   "qk_norm": {"choices": [False, True]}}}


def test_an_entry_like_an_earlier_one_copies_its_config_and_changes_what_it_names():
    space = parse({**LIKE, "enqueue": [{"label": "base", "lr": 2e-3, "warmup_steps": 200, "qk_norm": True},
                                       {"label": "no-qk", "like": "base", "qk_norm": False},
                                       {"label": "slow", "like": "no-qk", "lr": 1e-3}]})
    base = RunConfig.from_dict(space.fixed)
    configs = {label: space.suggest(optuna.trial.FixedTrial(params), base) for label, params in space.enqueue}
    assert (configs["base"].lr, configs["base"].warmup_steps, configs["base"].qk_norm) == (2e-3, 200, True)
    assert (configs["no-qk"].lr, configs["no-qk"].warmup_steps, configs["no-qk"].qk_norm) == (2e-3, 200, False)
    assert (configs["slow"].lr, configs["slow"].warmup_steps, configs["slow"].qk_norm) == (1e-3, 200, False)


@pytest.mark.parametrize("second, where, message", [
    ({"like": "nope", "lr": 1e-3}, r"enqueue\[1\].like", "not the label of an earlier entry; earlier: base"),
    ({"like": "base", "preset": "report-000"}, r"enqueue\[1\]", "preset or like, not both"),
    ({"like": "base", "label": "same"}, r"enqueue\[1\]", r"same trial as enqueue\[0\]"),
])
def test_a_like_that_cannot_be_followed_is_refused(second, where, message):
    with pytest.raises(SpaceError, match=rf"'{where}'.*{message}"):
        parse({**LIKE, "enqueue": [{"label": "base", "lr": 2e-3, "warmup_steps": 200, "qk_norm": True}, second]})


# ---------------------------------------------------------------------- bad files through the CLI
BAD_FILES = {
    "malformed": "params: {lr: [low: 1\n",
    "tabs": "params:\n\tlr: {low: 1.0e-4, high: 1.0e-2}\n",
    "duplicate_keys": "params:\n  lr: {low: 1.0e-4, high: 1.0e-2}\n  lr: {low: 1.0e-3, high: 1.0e-2}\n",
    "billion_laughs": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                      "params: *d\n",
    "recursive_anchor": "params: &p {lr: *p}\n",
    "python_tag": "params: !!python/object/apply:os.system ['touch pwned']\n",
    "python_name": "params: {lr: !!python/name:os.system }\n",
    "top_level_list": "- lr\n- dropout\n",
    "top_level_scalar": "just words\n",
    "empty": "",
    "wrong_types": "params:\n  lr: {low: [1], high: 2}\n",
    "low_ge_high": "params:\n  dropout: {low: 0.3, high: 0.1}\n",
    "fixed_field": "params:\n  num_titles: {low: 1000, high: 2000}\n",
    "sampled_vocab": "fixed: {mainrun_rules: false}\nparams:\n  vocab_size: {values: [300, 600]}\n",
    "n_head_off_d_model": "fixed: {d_model: 32}\nparams:\n  n_head: {low: 2, high: 8, step: 2}\n",
    "enqueue_head_dim_0": "params:\n  d_model: {values: [32, 64]}\n  head_dim: {values: [8, 16]}\n"
                          "enqueue: [{d_model: 32, head_dim: 0}]\n",
    "enqueue_head_dim_null": "params:\n  d_model: {values: [32, 64]}\n  head_dim: {values: [8, 16]}\n"
                             "enqueue: [{d_model: 32, head_dim: null}]\n",
    "binary": "\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_space_files_exit_2_and_create_nothing(name, tmp_path, titles_file):
    space = tmp_path / f"{name}.yaml"
    content = BAD_FILES[name]
    space.write_bytes(content.encode("latin-1") if name == "binary" else content.encode())
    db = tmp_path / "never.db"
    proc = subprocess.run(cli("mainrun-search", "--space", str(space), "--trials", "2", "--dataset", str(titles_file),
                              "--storage", f"sqlite:///{db}"), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(space) in proc.stderr and "error:" in proc.stderr
    assert not db.exists()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("problem", ["missing", "directory", "unreadable"])
def test_unreadable_or_missing_space_file_exits_2(problem, tmp_path):
    import os
    space = tmp_path / "space.yaml"
    if problem == "directory":
        space.mkdir()
    elif problem == "unreadable":
        space.write_text("params: {lr: {low: 1.0e-4, high: 1.0e-2}}\n")
        space.chmod(0)
        if os.access(space, os.R_OK):                        # root reads everything
            pytest.skip("running as root: chmod 0 does not stop reads")
    proc = subprocess.run(cli("mainrun-search", "--space", str(space), "--storage", f"sqlite:///{tmp_path}/x.db"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "space.yaml" in proc.stderr
    assert not (tmp_path / "x.db").exists()


# ---------------------------------------------------------------------- property: never a foreign exception
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=8), st.sampled_from(["sgd", "adamw", "gelu", "swiglu", "1e-3", "tpe"]))
field_names = st.sampled_from(["lr", "dropout", "d_model", "n_head", "head_dim", "optimizer", "mlp", "momentum",
                               "epochs", "bogus", "warmup_steps", "n_layer", "weight_decay", "nesterov"])
param_keys = st.sampled_from(["low", "high", "log", "step", "choices", "values", "when", "type"])
param_specs = st.one_of(
    yaml_scalars,
    st.dictionaries(param_keys, st.one_of(yaml_scalars, st.lists(yaml_scalars, max_size=4),
                                          st.dictionaries(field_names, yaml_scalars, max_size=2)), max_size=4),
)
documents = st.one_of(
    yaml_scalars,
    st.lists(yaml_scalars, max_size=3),
    st.fixed_dictionaries({}, optional={
        "params": st.one_of(yaml_scalars, st.dictionaries(field_names, param_specs, max_size=4)),
        "fixed": st.one_of(yaml_scalars, st.dictionaries(field_names, yaml_scalars, max_size=3)),
        "sampler": st.one_of(st.sampled_from(["tpe", "random", "grid", "gp", "nope"]), yaml_scalars,
                             st.dictionaries(st.sampled_from(["name", "seed", "n_startup_trials", "x"]), yaml_scalars,
                                             max_size=2)),
        "pruner": st.one_of(st.sampled_from(["median", "hyperband", "none", "nope"]), yaml_scalars),
        "enqueue": st.one_of(yaml_scalars, st.lists(st.one_of(st.sampled_from(["baseline", "report-000"]),
                                                              st.dictionaries(field_names, yaml_scalars, max_size=3)),
                                                    max_size=2)),
        "cpu_ok": yaml_scalars,
        "description": yaml_scalars,
    }),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_parses_or_raises_space_error(doc):
    try:
        space = parse_space(doc, "fuzz.yaml")
    except SpaceError:
        return
    # whatever parsed must sample runnable configs
    for _params, cfg in sample(space, 3):
        assert isinstance(cfg, RunConfig)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_space_error(text):
    """YAML errors (YamlError) and space errors (SpaceError) are both the tool's ConfigError."""
    from mainrun.config import ConfigError, parse_yaml_text
    try:
        parse_space(parse_yaml_text(text, "fuzz.yaml"), "fuzz.yaml")
    except ConfigError:
        pass

