"""The HTML pages of mainrun-report (a study) and mainrun-report --compare (several studies):
Jinja2 templates from mainrun/templates, autoescaped, around one shared page (its CSS and
plotly.js inlined: a page needs no network), the formatters of `formats` as filters, and the
output folder both write into.

Anything a study recorded (names, devices, reasons, labels) is text: the templates escape it.
Only plotly's own output goes in unescaped, as `Markup` (plotly escapes the JSON it embeds).
"""
from __future__ import annotations

import datetime as _dt
import functools
from pathlib import Path

from . import __version__, formats
from .errors import SearchError

PLOT_HEIGHT = "520px"
PNG_DPI = 110
FILTERS = ("param_value", "param_count", "mebibytes", "duration", "seconds_amount", "metric_value", "percent",
           "number")


@functools.cache
def _environment():
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("mainrun", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update({name: getattr(formats, name) for name in FILTERS})
    return env


def render_page(template: str, title: str, **context) -> str:
    """A whole page: `template` (which extends page.html.j2) with `context`, plotly.js inlined."""
    import optuna
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    return _environment().get_template(template).render(
        title=title, plotly_js=Markup(get_plotlyjs()), mainrun_version=__version__,
        optuna_version=optuna.__version__, made=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), **context)


def plot_div(fig, div_id: str):
    """A plotly figure as a <div> for a page (plotly.js itself is inlined once, by the page)."""
    import plotly.io as pio
    from markupsafe import Markup
    return Markup(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                              default_height=PLOT_HEIGHT, config={"displaylogo": False, "responsive": True}))


def output_folder(out_dir: str | Path) -> Path:
    """The --out folder, created; a file of that name, or a folder that cannot be made, is a
    SearchError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return out
