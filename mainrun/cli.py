"""Thin entry points: parse arguments, call the package, turn a MainrunError into exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn

from .config import PRESETS, RunConfig, parse_overrides
from .errors import ConfigError, MainrunError

EXIT_USAGE = 2


def _sigterm_as_interrupt(_signum, _frame) -> NoReturn:
    raise KeyboardInterrupt("SIGTERM")


def _interruptible(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """SIGTERM stops a command like Ctrl-C wherever it lands (the imports, data preparation,
    training, a search waiting between rounds), with a message and 130 or 143; search workers
    install their own. SIGINT is set explicitly: a command started with `&` from a script
    inherits it ignored, and Python then never raises KeyboardInterrupt."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        previous = {sig: signal.signal(sig, handler) for sig, handler in
                    ((signal.SIGTERM, _sigterm_as_interrupt), (signal.SIGINT, signal.default_int_handler))}
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            print(f"interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
            return 143 if str(e) == "SIGTERM" else 130
        finally:                            # for a caller in the same process, such as a test
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return run


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def load_run_config(config: str | None, preset: str | None, dataset: str | None, overrides: list[str]) -> RunConfig:
    """Baseline <- preset <- config file <- --dataset <- --set, each validated."""
    cfg = RunConfig()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        cfg = RunConfig.from_dict(PRESETS[preset], base=cfg, source=f"preset {preset}")
    if config:
        cfg = RunConfig.from_yaml(config, base=cfg)
    extra = parse_overrides(overrides, "--set")
    if dataset:
        extra["dataset"] = dataset
    return RunConfig.from_dict(extra, base=cfg, source="command line") if extra else cfg


# ---------------------------------------------------------------------- mainrun-train
@_interruptible
def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mainrun-train",
        description="Run one Mainrun training run (7 epochs) and print the final validation loss.")
    parser.add_argument("--config", help="run config YAML (a partial file overrides the baseline)")
    parser.add_argument("--preset", help=f"start from a known setting: {', '.join(PRESETS)}")
    parser.add_argument("--dataset", help="hub id or local titles file/folder (overrides the config)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set lr=3e-4 (repeatable)")
    parser.add_argument("--log", default="logs/mainrun.log", help="JSONL event log (default: %(default)s)")
    parser.add_argument("--cache-dir", help="tokenizer/id cache (default: $MAINRUN_CACHE_DIR or ~/.cache/mainrun)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write TensorBoard event files (train/loss, val/loss, lr, tokens/s) into a new "
                             "run folder under DIR; needs the tensorboard extra")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="save the whole training state in DIR/checkpoint.pt at evaluations (within 2%% of the "
                             "training time) and at the step where Ctrl-C or SIGTERM stops the run; a finished run "
                             "removes it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --checkpoint-dir (same config, data and code); it ends at "
                             "the value of an uninterrupted run")
    args = parser.parse_args(argv)
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir DIR (the folder the run saved its checkpoint in)")

    from .checkpoint import run_checkpointer
    from .data import prepare_data
    from .tensorboard import TensorBoardWriter, new_run_dir, summary_writer_class
    from .train import resolve_device, train

    try:
        cfg = load_run_config(args.config, args.preset, args.dataset, args.overrides)
        device = resolve_device(args.device)                  # before the data work, not after it
        if args.tensorboard:
            summary_writer_class()                            # a missing package exits 2 here, not after the run
            tb_dir = new_run_dir(args.tensorboard)
            print(f"tensorboard: {tb_dir} (view: tensorboard --logdir {args.tensorboard})")
        data = prepare_data(cfg, args.cache_dir)
        checkpoint = run_checkpointer(args.checkpoint_dir, cfg, data, device, args.resume) if args.checkpoint_dir \
            else None
        observers = [TensorBoardWriter(tb_dir, cfg)] if args.tensorboard else []
        try:
            with checkpoint.interrupts_deferred() if checkpoint else contextlib.nullcontext():
                result = train(cfg, data, device=device, log_path=args.log, progress=not args.no_progress,
                               observers=observers, checkpoint=checkpoint)
        finally:
            for observer in observers:
                observer.close()
        if checkpoint:                          # the run is over: nothing to resume
            checkpoint.remove()
    except MainrunError as e:
        _fail(str(e))
    peak = "" if result.peak_memory_mb is None else f", peak {result.peak_memory_mb:,.0f} MiB"
    print(f"done: {result.steps} steps, train {result.train_seconds:.1f}s (setup {result.setup_seconds:.1f}s), "
          f"data {result.prep_seconds:.1f}s, {result.tokens_per_second:,.0f} tokens/s, {result.n_params:,} params, "
          f"device {result.device_label}{peak}, log {Path(args.log)}")
    if not cfg.comparable:
        print("NOTE: mainrun_rules is off; this value is not comparable with Mainrun's.")
    if cfg.effective_train_seed != cfg.seed:
        print(f"NOTE: train_seed {cfg.train_seed} is not seed {cfg.seed}: a robustness run. It scores the same "
              f"validation tokens as the official run (train seed {cfg.seed}), but its value is not that number.")
    print(f"val_loss={result.val_loss:.6f}")
    return 0 if result.diverged is None else 1


# ---------------------------------------------------------------------- mainrun-search
def _gpu_list(text: str) -> list[int]:
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices such as 0,1,2; got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _positive_or_all(text: str) -> int | None:
    """A positive count, or 'all' (None)."""
    if text == "all":
        return None
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all'; got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def _add_worker_flags(parser: argparse.ArgumentParser, dataset_help: str) -> None:
    """Where the workers of a search or a confirmation train, and how they find each other."""
    from .storage import DEFAULT_STORAGE, HEARTBEAT_GRACE, HEARTBEAT_INTERVAL
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help="SQLAlchemy URL of the study database (default: %(default)s); "
                             "postgresql+psycopg://user@host/db to share a study between machines")
    parser.add_argument("--dataset", help=dataset_help)
    parser.add_argument("--device", default="auto", help="device for the workers: auto (default), cpu, cuda, cuda:1")
    parser.add_argument("--jobs", type=_positive, default=1, help="worker processes on this machine (default: 1)")
    parser.add_argument("--gpus", type=_gpu_list, help="GPU indices, one set of workers per GPU, e.g. 0,1,2,3")
    parser.add_argument("--jobs-per-gpu", type=_positive, default=1, help="workers per GPU with --gpus (default: 1)")
    parser.add_argument("--memory-budget", type=_positive_float, metavar="GIB",
                        help="device memory one trial may use; a trial whose estimated need is larger is refused "
                             "before it starts, recorded as failed with the reason (default on a GPU: its memory "
                             "divided by the workers sharing it; on the CPU: the host's available memory divided "
                             "by the workers)")
    parser.add_argument("--cache-dir", help="tokenizer/id cache (default: $MAINRUN_CACHE_DIR or ~/.cache/mainrun)")
    parser.add_argument("--artifacts", help="trial artifact folder (default: beside the SQLite file, or studies/artifacts)")
    parser.add_argument("--heartbeat", type=_positive, default=HEARTBEAT_INTERVAL,
                        help="seconds between worker heartbeats (default: %(default)s)")
    parser.add_argument("--heartbeat-grace", type=_positive, default=HEARTBEAT_GRACE,
                        help="seconds without a heartbeat before a trial counts as lost and is retried "
                             "(default: %(default)s)")


def _check_workers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.gpus and args.jobs != 1:
        parser.error("--jobs goes with one device; with --gpus use --jobs-per-gpu")
    if args.heartbeat_grace <= args.heartbeat:
        parser.error("--heartbeat-grace must be longer than --heartbeat")


@_interruptible
def search_main(argv: list[str] | None = None) -> int:
    from .policy import PRUNERS, SAMPLERS

    parser = argparse.ArgumentParser(
        prog="mainrun-search",
        description="Search Mainrun hyperparameters with Optuna: every trial is a full seven-epoch run, "
                    "pruned on intermediate validation loss. Re-running the same command resumes the study.")
    parser.add_argument("--space", required=True, help="search-space YAML, e.g. search_spaces/arch.yaml")
    parser.add_argument("--trials", type=_positive, default=40,
                        help="TOTAL finished trials (complete + pruned) the study should end with, not 'N more': "
                             "a re-run after an interruption runs only the missing ones (default: %(default)s)")
    parser.add_argument("--study", help="study name (default: the space file's stem)")
    parser.add_argument("--new-study", action="store_true",
                        help="if the study exists with another space or dataset, resume the first NAME-2 (NAME-3, ...) "
                             "made from these inputs, or start the next free one")
    _add_worker_flags(parser, "hub id or local titles file/folder (default: the Mainrun hub dataset)")
    parser.add_argument("--seed", type=int, help="sampler seed: makes a one-worker search repeatable")
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                        help="start no new trial after this many seconds (running trials finish); the search "
                             "ends at --trials or here, whichever comes first")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what the search would sample, its enqueued trials and the largest model's "
                             "memory by estimate, then exit: nothing is created, read or trained")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS),
                        help="use this sampler (with mainrun's defaults) instead of the space file's; "
                             "part of the study's identity, like the space itself")
    parser.add_argument("--pruner", choices=sorted(PRUNERS),
                        help="use this pruner instead of the space file's (none: every trial runs to the end)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write each trial's TensorBoard event files (train/loss, val/loss, lr, tokens/s) "
                             "into DIR/STUDY/trial-N; needs the tensorboard extra")
    parser.add_argument("--confirm", type=_positive, metavar="K",
                        help="when the search is done, confirm its K best configs and its references on 3 extra "
                             "train seeds, on the same workers (as mainrun-confirm --top K)")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="trial checkpoints, from which a lost worker's retried trial resumes (default: "
                             "'checkpoints' beside the artifacts folder); on several machines, a folder they all "
                             "mount")
    args = parser.parse_args(argv)
    _check_workers(parser, args)

    from .search import SearchOptions, plan_search, run_search
    from .storage import StorageSettings

    opts = SearchOptions(
        space=args.space, trials=args.trials, study=args.study, dataset=args.dataset, device=args.device,
        storage=StorageSettings(args.storage, args.heartbeat, args.heartbeat_grace), jobs=args.jobs,
        gpus=args.gpus, jobs_per_gpu=args.jobs_per_gpu, seed=args.seed, new_study=args.new_study,
        cache_dir=args.cache_dir, artifacts=args.artifacts, sampler=args.sampler, pruner=args.pruner,
        memory_budget_gib=args.memory_budget, timeout=args.timeout, tensorboard=args.tensorboard,
        checkpoint_dir=args.checkpoint_dir)
    try:
        if args.dry_run:
            code = plan_search(opts)
            if args.confirm:
                from .confirm.run import plan_after_search
                plan_after_search(opts, top=args.confirm)
            return code
        searched = run_search(opts)
        if not args.confirm:
            return searched.exit_code
        from .confirm.run import confirm_after_search
        return confirm_after_search(opts, searched, top=args.confirm)
    except MainrunError as e:
        _fail(str(e))


# ---------------------------------------------------------------------- mainrun-confirm
def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected train seeds such as 1,2,3; got {text!r}") from None


@_interruptible
def confirm_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mainrun-confirm",
        description="Confirm a search's finalists (its best configs and the baseline, report-000 and report-003 "
                    "it enqueued) on extra train seeds, the same seeds for every config, in the companion study "
                    "NAME-confirm; print each config's mean ± sd and 95% CI and whether the best beats the "
                    "references and the runner-up (paired t-test). Re-running the same command runs only what "
                    "is missing.")
    parser.add_argument("--study", required=True, help="the search study to confirm")
    parser.add_argument("--top", type=_positive_or_all, default=3,
                        help="confirm the K best complete trials with distinct configs (default: %(default)s), "
                             "plus the references; all: every complete config (an ablation study)")
    parser.add_argument("--against", metavar="NAME",
                        help="an ablation: compare every config with this one (its enqueue label, or 'trial N'), "
                             "seed by seed, in a table of changes with their 95%% CIs")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_positive, metavar="N",
                       help="extra train seeds 1..N for every config (default: 3); the official seed (1337) is "
                            "the search's own run")
    seeds.add_argument("--seed-list", type=_seed_list, metavar="S1,S2,...",
                       help="these extra train seeds instead (no repeats, not the official seed)")
    _add_worker_flags(parser, "another path to the titles the study was searched on (they must hash the same; "
                              "default: the study's dataset)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the finalists, the seeds and the runs still missing, then exit: nothing is "
                             "created or trained")
    args = parser.parse_args(argv)
    _check_workers(parser, args)

    from .confirm.run import ConfirmOptions, run_confirm
    from .storage import StorageSettings

    opts = ConfirmOptions(
        study=args.study, storage=StorageSettings(args.storage, args.heartbeat, args.heartbeat_grace), top=args.top,
        against=args.against, seeds=args.seeds, seed_list=args.seed_list, dataset=args.dataset, device=args.device, jobs=args.jobs,
        gpus=args.gpus, jobs_per_gpu=args.jobs_per_gpu, cache_dir=args.cache_dir, artifacts=args.artifacts,
        memory_budget_gib=args.memory_budget)
    try:
        return run_confirm(opts, dry_run=args.dry_run)
    except MainrunError as e:
        _fail(str(e))


# ---------------------------------------------------------------------- mainrun-export
def export_main(argv: list[str] | None = None) -> int:
    from .storage import DEFAULT_STORAGE

    parser = argparse.ArgumentParser(
        prog="mainrun-export",
        description="Write a trial's complete run config (default: the best trial) for mainrun-train --config.")
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="default: %(default)s")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="trial number (default: the best complete trial)")
    which.add_argument("--confirmed", action="store_true",
                       help="the config with the best mean over its train seeds in the study's confirmation "
                            "(mainrun-confirm), not the best single run")
    parser.add_argument("--out", required=True, help="output YAML file")
    args = parser.parse_args(argv)

    from optuna.trial import TrialState

    from .export import export_confirmed, export_trial
    try:
        if args.confirmed:
            best = export_confirmed(args.storage, args.study, args.out)
        else:
            trial = export_trial(args.storage, args.study, args.out, args.trial)
    except MainrunError as e:
        _fail(str(e))
    if args.confirmed:
        spread = best.spread
        sd = f" ± {spread.sd:.6f}" if spread.sd is not None else ""
        print(f"exported {best.finalist.label} (val_loss mean {spread.mean:.6f}{sd} over {spread.n} train seeds) "
              f"to {args.out}")
        print(f"next: mainrun-train --config {args.out}")
        return 0
    if trial.state == TrialState.COMPLETE:
        print(f"exported trial {trial.number} (val_loss {trial.value:.6f}) to {args.out}")
    else:                         # its config runs, but no full run of it has a number to reproduce
        why = trial.user_attrs.get("prune_reason") or trial.user_attrs.get("fail_reason") or "no reason recorded"
        print(f"exported trial {trial.number} to {args.out}", flush=True)
        print(f"note: trial {trial.number} is {trial.state.name.lower()} ({why}); it has no full-run val_loss "
              "to reproduce", file=sys.stderr)
    print(f"next: mainrun-train --config {args.out}")
    return 0


# ---------------------------------------------------------------------- mainrun-report
def report_main(argv: list[str] | None = None) -> int:
    from .storage import DEFAULT_STORAGE

    parser = argparse.ArgumentParser(
        prog="mainrun-report",
        description="Write a self-contained HTML report of a study (history, intermediate curves, importances, "
                    "parallel coordinates, best config, top trials, totals) plus PNG copies of its plots; or, with "
                    "--compare, compare the search efficiency of several studies (best value against device time, "
                    "at equal budget, and the time pruning saved).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="report on this study: OUT/index.html and OUT/*.png")
    which.add_argument("--compare", nargs="+", metavar="STUDY",
                       help="compare these studies (at least 2): OUT/compare.html and OUT/compare.png")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="default: %(default)s")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--top", type=_positive, default=10, help="rows in the top-trials table (default: %(default)s)")
    parser.add_argument("--trial", type=int, action="append", default=[], metavar="N",
                        help="with --study: also draw trial N's training curves beside the best trial's and the "
                             "baseline's (repeatable)")
    parser.add_argument("--against", metavar="NAME",
                        help="with --study, for an ablation: the Confirmed section compares every config with this "
                             "one (as mainrun-confirm --against)")
    args = parser.parse_args(argv)
    if args.compare is not None and len(args.compare) < 2:
        parser.error("--compare needs at least 2 study names")
    if args.compare is not None and (args.trial or args.against):
        parser.error("--trial and --against go with --study")

    from .compare import build_comparison
    from .report import build_report
    try:
        if args.compare:
            index = build_comparison(args.storage, args.compare, args.out)
        else:
            index = build_report(args.storage, args.study, args.out, top=args.top, curve_trials=args.trial,
                                 against=args.against)
    except MainrunError as e:
        _fail(str(e))
    print(f"report: {index}")
    return 0
