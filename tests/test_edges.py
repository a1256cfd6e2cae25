"""Where a config sits at the edge of a search space: what counts as an edge, and what does not."""
from __future__ import annotations

import optuna
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ROOT, SPACES
from mainrun.config import RunConfig
from mainrun.edges import edge_warnings
from mainrun.space import load_space, parse_space


def parse(doc: dict):
    return parse_space(doc, "space.yaml")


EDGE_SPACE = {"fixed": {"schedule": "warmup_cosine"}, "params": {
    "optimizer": {"choices": ["adamw", "sgd"]},
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": ["sgd"]}},
    "dropout": {"low": 0.0, "high": 0.2},
    "beta2": {"values": [0.95, 0.99, 0.999]},
    "d_model": {"values": [256, 512, 1024]},
    "head_dim": {"values": [32, 64, 128]},
    "n_layer": {"low": 4, "high": 12},
    "warmup_steps": {"low": 0, "high": 400, "step": 50},
}}


def edge_config(**changes) -> dict:
    inside = {"optimizer": "adamw", "lr": 1e-3, "momentum": 0.0, "dropout": 0.1, "beta2": 0.99, "d_model": 512,
              "n_head": 8, "n_layer": 8, "warmup_steps": 200}
    return {**RunConfig().to_dict(), **inside, **changes}


def test_a_config_inside_every_range_has_no_edge():
    assert edge_warnings(parse(EDGE_SPACE), edge_config()) == []


def test_values_at_a_movable_end_of_their_range_are_named():
    space = parse(EDGE_SPACE)
    warnings = edge_warnings(space, edge_config(d_model=1024, n_head=8, n_layer=4, warmup_steps=400, beta2=0.95))
    assert warnings == ["beta2 0.95 is the bottom of its range: widen it",
                        "d_model 1024 is the top of its range: widen it",
                        "head_dim 128 is the top of its range: widen it",
                        "n_layer 4 is the bottom of its range: widen it",
                        "warmup_steps 400 is the top of its range: widen it"]


def test_a_continuous_value_near_an_end_counts_measured_on_the_log_scale_for_a_log_range():
    space = parse(EDGE_SPACE)
    # 5% of log(1e-2 / 1e-4) is a factor 100 ** 0.05 = 1.26
    assert edge_warnings(space, edge_config(lr=8.5e-3)) == ["lr 0.0085 is near the top of its range (0.01): widen it"]
    assert edge_warnings(space, edge_config(lr=7.5e-3)) == []
    assert edge_warnings(space, edge_config(lr=1.2e-4)) == ["lr 0.00012 is near the bottom of its range (0.0001): widen it"]
    assert edge_warnings(space, edge_config(dropout=0.195)) == ["dropout 0.195 is near the top of its range (0.2): widen it"]


def test_an_end_that_is_the_fields_own_bound_or_an_inactive_param_is_not_an_edge():
    space = parse(EDGE_SPACE)
    # dropout below 0, beta2 beyond 0.999 (half a spacing further is 1.0035) or warmup below 0 cannot be tried
    assert edge_warnings(space, edge_config(dropout=0.0, beta2=0.999, warmup_steps=0)) == []
    # momentum is not sampled for adamw, whatever the stored config says
    assert edge_warnings(space, edge_config(momentum=0.9)) == []
    assert edge_warnings(space, edge_config(optimizer="sgd", momentum=0.9)) == ["momentum 0.9 is the top of its range: widen it"]


def test_a_single_pinned_value_is_not_an_edge():
    # `values: [512]` pins the field: nothing to widen, and no spacing to widen it by (this once
    # raised IndexError in the search's closing summary, after every trial had run)
    space = parse({"params": {"d_model": {"values": [512]}, "head_dim": {"values": [64]},
                              "n_layer": {"values": [4, 8]}}})
    assert edge_warnings(space, edge_config(d_model=512, n_head=8, n_layer=8)) == \
        ["n_layer 8 is the top of its range: widen it"]


def test_the_shipped_best_sits_at_an_edge_of_optim_yaml_and_inside_the_widened_arch_space():
    best = RunConfig.from_yaml(ROOT / "studies" / "best-standin.yaml").to_dict()
    # it took beta2 0.95, the bottom of the values both spaces once had; arch.yaml added 0.9 for it
    assert edge_warnings(load_space(SPACES / "optim.yaml"), best) == ["beta2 0.95 is the bottom of its range: widen it"]
    assert edge_warnings(load_space(SPACES / "arch.yaml"), best) == []


@st.composite
def numeric_spaces(draw) -> dict:
    """Valid spaces of the numeric kinds: ordered values (one of them alone), log and linear
    ranges, and a stepped range."""
    layers = draw(st.lists(st.integers(1, 24), min_size=1, max_size=4, unique=True))
    rates = draw(st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]), min_size=1, max_size=3, unique=True))
    lr_low = draw(st.floats(1e-5, 1e-2))
    warmup_low = 50 * draw(st.integers(0, 10))
    return {"fixed": {"schedule": "warmup_cosine"}, "params": {
        "n_layer": {"values": sorted(layers)},
        "dropout": {"values": sorted(rates)},
        "lr": {"low": lr_low, "high": lr_low * draw(st.floats(1.01, 100)), "log": draw(st.booleans())},
        "weight_decay": {"low": 0.0, "high": draw(st.floats(0.01, 0.3))},
        "warmup_steps": {"low": warmup_low, "high": warmup_low + 50 * draw(st.integers(1, 8)), "step": 50},
    }}


@settings(max_examples=100, deadline=None)
@given(numeric_spaces(), st.integers(0, 2**16))
def test_any_sampled_config_gets_an_answer_and_pinned_values_never_warn(doc, seed):
    space = parse(doc)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    movable = {p.name for p in space.params if p.count() != 1}
    for _ in range(3):
        trial = study.ask()
        warnings = edge_warnings(space, space.suggest(trial, RunConfig()).to_dict())
        study.tell(trial, 1.0)
        assert {line.split()[0] for line in warnings} <= movable
