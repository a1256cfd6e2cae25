"""The shell lines that the tools print as next steps, and that the studies' dashboard notes
show: one owner for each command's flags, so that every hint stays runnable as the flags change.
Names are quoted for the shell; a storage URL is shown with its password hidden."""
from __future__ import annotations

import shlex
from pathlib import Path

from .storage import DEFAULT_STORAGE, redact


def storage_flag(url: str) -> str:
    """' --storage URL' for a command line to print (quoted, password hidden); '' for the default."""
    return "" if url == DEFAULT_STORAGE else f" --storage {shlex.quote(redact(url))}"


def dashboard_command(storage_url: str, artifacts: Path) -> str:
    return f"optuna-dashboard {redact(storage_url)} --host 127.0.0.1 --port 8080 --artifact-dir {artifacts}"


def export_command(storage_url: str, study_name: str, confirmed: bool = False) -> str:
    """The line that exports a study's best trial (or, `confirmed`, its config with the best
    confirmed mean) and trains it."""
    return (f"mainrun-export --study {shlex.quote(study_name)}{storage_flag(storage_url)}"
            f"{' --confirmed' if confirmed else ''} --out best.yaml && mainrun-train --config best.yaml")


def confirm_command(storage_url: str, study_name: str) -> str:
    """The line that confirms a study's finalists on extra train seeds."""
    return f"mainrun-confirm --study {shlex.quote(study_name)}{storage_flag(storage_url)}"


def report_command(storage_url: str, study_name: str) -> str:
    """The line that writes a study's report page into report-NAME/."""
    out = shlex.quote(f"report-{study_name}")
    return f"mainrun-report --study {shlex.quote(study_name)}{storage_flag(storage_url)} --out {out}"
