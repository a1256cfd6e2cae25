"""The curves a run is read by: training loss, validation loss and learning rate against the step.

A trial keeps them as its user attr `curves` (what `curves_record` makes of a RunResult), so the
report can draw them from the study database alone; optuna-dashboard shows the PNG that
`write_curves_png` draws as one more artifact of the trial. Every figure puts the lr on a panel of
its own, under the losses, on the same steps.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .train import RunResult

# A curve is [[step, value], ...]; None stands for a value that was not finite (a diverged run),
# since JSON has no NaN and the dashboard parses user attrs as JSON.
Curve = list[list[Any]]
CURVES_ATTR = "curves"
KINDS = ("train", "val", "lr")              # training loss, validation loss, learning rate


def _point(step: int, value: float, digits: int) -> list[Any]:
    return [step, float(f"{value:.{digits}g}") if math.isfinite(value) else None]


def curves_record(result: RunResult) -> dict[str, Curve]:
    """The run's three curves as the `curves` user attr: losses to 6 significant digits, the lr
    to 4 (about 330 training points for a Mainrun run: a few kB per trial)."""
    return {"train": [_point(s, v, 6) for s, v in result.train_curve],
            "val": [_point(s, v, 6) for s, v in result.curve],
            "lr": [_point(s, v, 4) for s, v in result.lr_curve]}


def trial_curves(user_attrs: dict[str, Any]) -> dict[str, Curve] | None:
    """A trial's recorded curves, or None for a trial that recorded none (made by an older
    mainrun, or failed before training)."""
    curves = user_attrs.get(CURVES_ATTR)
    if not isinstance(curves, dict) or not all(isinstance(curves.get(k), list) for k in KINDS):
        return None
    return curves


def _xy(curve: Curve) -> tuple[list[int], list[float]]:
    return [s for s, _ in curve], [math.nan if v is None else v for _, v in curve]


# ---------------------------------------------------------------------- the figures
# Three panels on one step axis. The two losses are not on one scale: training loss is per token
# (cross-entropy), validation loss per character (Mainrun's evaluate()).
PANELS = (("train", "train loss (per token)"), ("val", "validation loss (per char)"), ("lr", "learning rate"))
HEIGHTS = (0.4, 0.4, 0.2)


def curves_figure(runs: list[tuple[str, dict[str, Curve], str]]):
    """A plotly figure of (label, curves, colour) runs: training loss, validation loss (with a
    marker at each evaluation) and the lr, each on its own panel."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=list(HEIGHTS), vertical_spacing=0.04)
    for label, curves, color in runs:
        for row, (kind, _) in enumerate(PANELS, start=1):
            x, y = _xy(curves[kind])
            fig.add_scatter(x=x, y=y, name=label, legendgroup=label, showlegend=row == 1,
                            mode="lines+markers" if kind == "val" else "lines", marker=dict(size=5),
                            line=dict(color=color, width=2 if kind == "val" else 1.3), row=row, col=1)
    for row, (_, title) in enumerate(PANELS, start=1):
        fig.update_yaxes(title_text=title, row=row, col=1, exponentformat="e" if row == 3 else None)
    fig.update_xaxes(title_text="step", row=3, col=1)
    fig.update_layout(title="Training loss, validation loss and learning rate by step",
                      legend=dict(yanchor="top", y=0.99, xanchor="right", x=0.99, bgcolor="rgba(255,255,255,0.8)"))
    return fig


def write_curves_png(runs: list[tuple[str, dict[str, Curve], str]], path: Path, dpi: int = 100,
                     size: tuple[float, float] = (9, 7.5)) -> Path:
    """The same three panels as a PNG (matplotlib, Agg): a trial's artifact for optuna-dashboard
    (one run) and the report's PNG copy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=size, height_ratios=HEIGHTS)
    try:
        for label, curves, color in runs:
            for ax, (kind, _) in zip(axes, PANELS):
                ax.plot(*_xy(curves[kind]), color=color, linewidth=1.8 if kind == "val" else 1.2,
                        marker="o" if kind == "val" else None, markersize=3, label=label)
        for ax, (_, title) in zip(axes, PANELS):
            ax.set_ylabel(title, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].set_title("Training loss, validation loss and learning rate by step")
        axes[0].legend(loc="upper right")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        axes[2].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
