"""Where a config sits at the edge of a search space: when the best trial's value is an end of
its range, the optimum may lie outside the space, and the range should be widened.

The search's closing summary calls `edge_warnings` on the best config; mainrun-report and
mainrun-confirm call `recorded_space_edges` on the best (confirmed) one, from the space the study
recorded.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .config import check_field, is_number, parse_yaml_text
from .errors import ConfigError
from .formats import param_value
from .space import VIRTUAL, Param, SearchSpace, parse_space

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# A continuous value this close to an end of its range (as a fraction of the range, of its log
# for a log range) counts as at the edge: a sampler rarely draws an end exactly.
EDGE_FRACTION = 0.05


def edge_warnings(space: SearchSpace, config: dict[str, Any]) -> list[str]:
    """One line per sampled numeric param that `config` (a trial's, usually the best) has at a
    movable end of its range, e.g. "d_model 1280 is the top of its range: widen it"."""
    values = {**config, "head_dim": config["d_model"] // config["n_head"]} \
        if "d_model" in config and config.get("n_head") else dict(config)
    warnings = []
    for p in space.params:
        if p.name not in values or not p.active(values) or (at := edge(p, values[p.name])) is None:
            continue
        side, end = at
        where = (f"the {side} of its range" if values[p.name] == end
                 else f"near the {side} of its range ({param_value(end, 3)})")
        warnings.append(f"{p.name} {param_value(values[p.name], 3)} is {where}: widen it")
    return warnings


def recorded_space_edges(study: optuna.Study, trial: FrozenTrial | None) -> list[str]:
    """`edge_warnings` for `trial`'s config in the space the study recorded (its `space_yaml`);
    nothing for a study without a readable recorded space, or a trial without a config."""
    text, config = study.user_attrs.get("space_yaml"), (trial.user_attrs.get("config") if trial else None)
    if not isinstance(text, str) or not isinstance(config, dict):
        return []
    try:
        space = parse_space(parse_yaml_text(text, "the recorded space"), study.user_attrs.get("space_file", "space"),
                            text)
    except ConfigError:
        return []
    return edge_warnings(space, config)


def edge(p: Param, value: Any) -> tuple[str, Any] | None:
    """("top" or "bottom", that end) when `value` sits at an end of `p`'s numeric range that
    could be moved: the first or last of ordered values, an int or stepped range's end, or
    within EDGE_FRACTION of a continuous range's end (of its log for a log range). None inside
    the range, for categorical params, for a single pinned value (`values: [512]`: the user
    chose it, and it has no spacing to widen by), and at a bound of the field itself (dropout 0,
    beta2 0.999 of 0.9..0.999): there a wider range would only give invalid configs."""
    if p.choices is not None or p.count() == 1 or not is_number(value):
        return None
    ends = (p.values[0], p.values[-1]) if p.values is not None else (p.low, p.high)
    continuous = p.values is None and p.kind is float and p.step is None
    for side, end in (("top", ends[1]), ("bottom", ends[0])):
        if continuous and p.log:
            near = abs(math.log(value / end)) <= EDGE_FRACTION * math.log(ends[1] / ends[0])
        elif continuous:
            near = abs(value - end) <= EDGE_FRACTION * (ends[1] - ends[0])
        else:
            near = abs(value - end) <= (p.step or 0) / 2
        if near and _extends_past(p, end, 1 if side == "top" else -1):
            return side, end
    return None


def _extends_past(p: Param, end: float, direction: int) -> bool:
    """Whether the field takes a value just beyond `end`: half the spacing of the values next to
    it, one step, or EDGE_FRACTION of the range (of its log for a log range) further out."""
    if p.values is not None:
        spacing = p.values[-1] - p.values[-2] if direction > 0 else p.values[1] - p.values[0]
        beyond = end + direction * spacing / 2
    elif p.kind is int or p.step is not None:
        beyond = end + direction * (p.step or 1)
    elif p.log:
        beyond = end * (p.high / p.low) ** (direction * EDGE_FRACTION)
    else:
        beyond = end + direction * EDGE_FRACTION * (p.high - p.low)
    if p.name in VIRTUAL:                          # head_dim: any positive size
        return beyond >= 1
    try:
        check_field(p.name, beyond)
    except ConfigError:
        return False
    return True
