"""Helpers shared by the tests: generated titles, the tiny config, the CLI entry points, and a
Ctrl-C landed inside a storage read."""
from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"

WORDS = ("show hn ask launch rust python go gpu llm model database postgres sqlite open source "
         "release faster new why how we built a the for of in with your my tool api linux kernel "
         "compiler browser startup funding paper study security bug data privacy apple google").split()

# The smallest corpus/model that still exercises everything: seconds per run on a CPU.
TINY = {
    "mainrun_rules": False, "num_titles": 1000, "vocab_size": 300, "block_size": 32, "batch_size": 8,
    "n_layer": 1, "n_head": 2, "d_model": 32, "eval_batch_size": 4, "eval_block_size": 32,
}


def make_titles(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))).capitalize() + f" {i % 97}"
            for i in range(n)]


def cli(name: str, *args: str) -> list[str]:
    """argv for an installed entry point (mainrun-train, mainrun-search, mainrun-export)."""
    return [str(Path(sys.executable).parent / name), *args]


def bench(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    """`python -m mainrun.bench ARGS --json ROWS` in tmp_path: (its rows, its stdout); it must exit 0."""
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", *args, "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@contextlib.contextmanager
def interrupted_inside_the_next_read(interrupt: Callable[[], None], another_write: Callable[[], None]) -> Iterator[None]:
    """Inside: the next statement an engine runs (a read) is interrupted right after it ran, before
    its rows are fetched, just after `another_write()` (another worker's). `interrupt()` raises
    KeyboardInterrupt or sends the signal. A real Ctrl-C rarely lands there; here it always does.
    The read leaves its connection mid-statement; which pooled connection the next write takes
    depends on timing (the heartbeat thread's), so every idle one is left mid-read too."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    unread = []                               # held, as the interrupt's traceback holds a real one's
    reader = threading.get_ident()

    def land_here(conn, *_):                  # the engine's hook right after a statement ran
        if threading.get_ident() != reader:   # another thread's statement (the heartbeat's) is not the read
            return
        event.remove(Engine, "after_execute", land_here)
        idle = [conn.engine.connect() for _ in range(3)]
        unread.extend(c.exec_driver_sql("SELECT * FROM studies") for c in idle)
        for c in idle:
            c.close()                         # back to the pool, its statement still open
        another_write()
        interrupt()

    event.listen(Engine, "after_execute", land_here)
    try:
        yield
    finally:                                  # nothing later inherits the hook
        if event.contains(Engine, "after_execute", land_here):
            event.remove(Engine, "after_execute", land_here)
