"""The command lines the tools print as next steps: runnable as printed, secrets hidden."""
import shlex

from mainrun.commands import confirm_command, export_command, report_command
from mainrun.storage import DEFAULT_STORAGE

PG = "postgresql+psycopg://mainrun:s3cret@db.lan:5432/mainrun"


def test_the_default_storage_needs_no_flag():
    assert export_command(DEFAULT_STORAGE, "arch") == \
        "mainrun-export --study arch --out best.yaml && mainrun-train --config best.yaml"
    assert confirm_command(DEFAULT_STORAGE, "arch") == "mainrun-confirm --study arch"


def test_names_are_quoted_for_the_shell_and_passwords_hidden():
    export, train = export_command(PG, "my study", confirmed=True).split(" && ")
    assert shlex.split(export) == ["mainrun-export", "--study", "my study", "--storage",
                                   "postgresql+psycopg://mainrun:***@db.lan:5432/mainrun", "--confirmed",
                                   "--out", "best.yaml"]
    assert shlex.split(train) == ["mainrun-train", "--config", "best.yaml"]
    assert shlex.split(confirm_command(PG, "it's"))[:3] == ["mainrun-confirm", "--study", "it's"]
    report = shlex.split(report_command(PG, "my study"))
    assert report[report.index("--out") + 1] == "report-my study"
    assert all("s3cret" not in line for line in (export, confirm_command(PG, "s"), report_command(PG, "s")))
