"""Where a config sits at the edge of a search space: what counts as an edge, and what does not."""
from __future__ import annotations

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


def test_the_shipped_best_sits_at_an_edge_of_optim_yaml_and_inside_the_widened_arch_space():
    best = RunConfig.from_yaml(ROOT / "studies" / "best-standin.yaml").to_dict()
    # it took beta2 0.95, the bottom of the values both spaces once had; arch.yaml added 0.9 for it
    assert edge_warnings(load_space(SPACES / "optim.yaml"), best) == ["beta2 0.95 is the bottom of its range: widen it"]
    assert edge_warnings(load_space(SPACES / "arch.yaml"), best) == []
