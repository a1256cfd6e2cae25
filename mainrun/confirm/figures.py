"""The Confirmed section of mainrun-report: a dot-and-whisker plot (each config's runs, its mean
and 95% CI, its official value marked), as plotly for the page and matplotlib for the PNG, with
the table and the verdicts beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from ..errors import SearchError
from .companion import read_companion
from .console import spread_text, winners_curse_text
from .results import Confirmation, read_confirmation

OFFICIAL_COLOR, MEAN_COLOR, RUN_COLOR = "#d62728", "#1f77b4", "rgba(100, 100, 100, 0.6)"
TITLE = "Confirmed: val_loss over train seeds (mean and 95% CI; official run marked)"


def study_confirmation(study: optuna.Study, against: str | None = None) -> Confirmation | None:
    """The study's confirmation, None when it has none. `against`: an ablation's base, which
    every config is compared with (as mainrun-confirm --against); a base the confirmation does
    not hold is refused, so the report can read this before it writes anything."""
    companion = read_companion(study)
    if companion is None:
        if against is not None:
            raise SearchError(f"--against {against}: study '{study.study_name}' has no confirmation to compare in; "
                              f"run mainrun-confirm --study {study.study_name} first")
        return None
    return read_confirmation(study, companion, against)


def confirmed_section(c: Confirmation | None, out: Path) -> dict[str, Any] | None:
    """What the report's Confirmed section shows, or None when there is no confirmation (or it
    holds no config yet); its PNG is written into `out`."""
    from ..pages import plot_div
    if c is None or not c.configs:
        return None
    rows = [{"config": x, "mean": spread_text(x.spread)[0], "ci": spread_text(x.spread)[1]} for x in c.configs]
    return {"confirmation": c, "rows": rows, "div": plot_div(figure(c), "plot-confirmed"),
            "curses": [winners_curse_text(x) for x in c.configs if x.winners_curse], "png": write_png(c, out)}


def _points(c: Confirmation):
    """Per config, best mean on top: (label, official, fresh runs, mean, CI or None)."""
    for x in reversed(c.configs):
        fresh = [v for s, v in sorted(x.values.items()) if s != x.official_seed]
        yield x.finalist.label, x.official, fresh, x.spread.mean, x.spread.ci


def figure(c: Confirmation):
    import plotly.graph_objects as go
    fig = go.Figure()
    points = list(_points(c))
    for label, _, fresh, _, _ in points:
        fig.add_trace(go.Scatter(x=fresh, y=[label] * len(fresh), mode="markers", name="extra train seeds",
                                 legendgroup="runs", showlegend=label == points[0][0],
                                 marker=dict(color=RUN_COLOR, size=7),
                                 hovertemplate="%{y}<br>val_loss %{x:.4f}<extra>extra seed</extra>"))
    fig.add_trace(go.Scatter(
        x=[p[3] for p in points], y=[p[0] for p in points], mode="markers", name="mean, 95% CI",
        marker=dict(color=MEAN_COLOR, size=11),
        error_x=dict(type="data", symmetric=False, array=[(p[4][1] - p[3]) if p[4] else 0 for p in points],
                     arrayminus=[(p[3] - p[4][0]) if p[4] else 0 for p in points], thickness=2, width=6),
        hovertemplate="%{y}<br>mean %{x:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[p[1] for p in points], y=[p[0] for p in points], mode="markers",
                             name="official run (the search's)", marker=dict(color=OFFICIAL_COLOR, size=12,
                                                                            symbol="diamond-open", line=dict(width=2)),
                             hovertemplate="%{y}<br>official %{x:.4f}<extra></extra>"))
    fig.update_layout(title=TITLE, xaxis_title="val_loss (lower is better)", height=200 + 60 * len(points),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def write_png(c: Confirmation, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(_points(c))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.6 * len(points)))
    for y, (label, official, fresh, mean, ci) in enumerate(points):
        ax.scatter(fresh, [y] * len(fresh), color="#666666", alpha=0.6, s=20,
                   label="extra train seeds" if y == 0 else None, zorder=2)
        err = [[mean - ci[0]], [ci[1] - mean]] if ci else None
        ax.errorbar([mean], [y], xerr=err, fmt="o", color=MEAN_COLOR, capsize=4, markersize=8,
                    label="mean, 95% CI" if y == 0 else None, zorder=3)
        ax.scatter([official], [y], marker="D", facecolors="none", edgecolors=OFFICIAL_COLOR, s=70, linewidths=1.8,
                   label="official run (the search's)" if y == 0 else None, zorder=4)
    ax.set_yticks(range(len(points)), [p[0] for p in points])
    ax.set_xlabel("val_loss (lower is better)")
    ax.set_title(TITLE, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    from ..pages import PNG_DPI
    path = out / "confirmed.png"
    fig.savefig(path, dpi=PNG_DPI)
    plt.close(fig)
    return path
