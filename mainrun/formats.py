"""How numbers read, on the console and in the HTML pages: one function per kind of value.

Each returns text (no markup); the pages get them as Jinja filters of the same names.
"""
from __future__ import annotations

from typing import Any

from .config import is_number

GIB = 2**30
MISSING = "–"                  # a table cell with no value


def param_value(value: Any, digits: int) -> str:
    """A sampled parameter's value: floats to `digits` significant digits (3 on the console,
    4 in the report's tables), anything else as it is."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def param_count(n: Any) -> str:
    """A model's parameter count: 27.2M, or 31,012 for a tiny model."""
    if not is_number(n):
        return MISSING
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{int(n):,}"


def byte_size(n_bytes: float) -> str:
    """Memory: 2.4 GiB, or 3.1 MiB below a GiB."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def mebibytes(mb: Any) -> str:
    """A peak-memory cell in MiB: measured on CUDA only, so a CPU trial has none."""
    return f"{mb:,.0f}" if is_number(mb) else MISSING


def clock(seconds: float) -> str:
    """Elapsed time and ETA on a trial line: 1h02m, 3m05s."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def duration(seconds: float) -> str:
    """A wall-clock span in the report: 1h 02m, 3m 05s, 12.3s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def seconds_amount(seconds: float) -> str:
    """Device-seconds in the comparison: one decimal below 100 (12.3), none above (1,234)."""
    return f"{seconds:,.1f}" if seconds < 100 else f"{seconds:,.0f}"


def metric_value(value: float | None) -> str:
    """A best val_loss so far, to 4 decimals; 'none yet' before the first complete trial."""
    return "none yet" if value is None else f"{value:.4f}"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def number(value: float, spec: str) -> str:
    """Any number with a format spec, for the templates: {{ x | number(",.0f") }}."""
    return format(value, spec)
