"""mainrun-search: Optuna over full seven-epoch training runs, one trial per run.

    run.py         SearchOptions, run_search: inputs checked, data prepared once, study opened, workers run;
                   the study it ran and the exit code (Searched), which mainrun-search --confirm hands on
    plan.py        --dry-run: what the space samples and how big its models get
    study.py       the study: identity, create or resume, enqueued configs, policy; how its trials read
    objective.py   one trial: sample, refuse if too big, train and report, record, keep artifacts
    workers.py     worker processes, admission, rounds, heartbeats: they run any objective factory
    interrupts.py  Ctrl-C and SIGTERM in a worker: the running trial recorded as interrupted
    console.py     what a search prints

The study database itself (URLs, opening, locks, the artifact folder) is `mainrun.storage`,
shared with mainrun-export and mainrun-report.
"""
from .plan import plan_search
from .run import Searched, SearchOptions, run_search

__all__ = ["SearchOptions", "Searched", "plan_search", "run_search"]
