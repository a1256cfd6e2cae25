"""Helpers shared by the tests: generated titles, the tiny config, the CLI entry points."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

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
