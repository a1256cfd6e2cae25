"""SOAK: the chaos soak (python -m mainrun.bench --soak, mainrun/soak.py) for 60 seconds against
CI's PostgreSQL: the one long test of the suite (two to four minutes on a 2-core machine), marked
`soak` (deselect with -m "not soak").

Eight mainrun-search workers act as separate machines (own cache and temp folders, no shared file
lock); one of them is SIGKILLed every 3-8 s and replaced. Then the study must hold exactly --trials
finished trials, nothing running or waiting, every lost trial retried (resumed from its checkpoint
at that checkpoint's step when it had one), no config trained beyond its retries, and each resumed
value and curve equal to an uninterrupted rerun. Margins for a loaded machine: a live worker beats
every 2 s and counts as lost only after 20 s without a beat; the workers get 15 minutes to finish
the study after the kills stop, and nothing is asserted about time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TRIALS = 20


@pytest.mark.soak
def test_chaos_soak_60s_on_postgresql(pg_url, titles_file, tmp_path):
    figures_file = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--soak", "60", "--storage", pg_url,
                           "--dataset", str(titles_file), "--trials", str(TRIALS), "--json", str(figures_file)],
                          capture_output=True, text=True, timeout=1800, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert figures_file.exists(), proc.stdout[-6000:] + proc.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["problems"] == [] and proc.returncode == 0, proc.stdout[-6000:]
    assert figures["finished"] == TRIALS and figures["over_count"] == 0
    assert figures["left_running"] == figures["left_waiting"] == 0
    assert figures["lost_configs"] == figures["duplicated"] == figures["spurious_stale"] == 0
    assert figures["retries"] >= figures["lost_trials"] - figures["lost_configs"]
    assert figures["resumes_rerun_equal"] == figures["resumes"]
    assert figures["kills"] >= 1
    assert "every check holds" in proc.stdout
