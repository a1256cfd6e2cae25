"""The search benchmark: how long a whole search takes and where its device time goes.

    python -m mainrun.bench --dataset titles.txt --search search_spaces/arch.yaml --trials 40 --jobs 3
    python -m mainrun.bench --dataset titles.txt --replay arch --replay-storage sqlite:///studies/x.db --jobs 3

`--search` runs a fresh search per --jobs value: the headline figure of a search, but each one
samples its own trials (TPE's draws depend on timing with several workers). With several
--sampler, --pruner or --seed values it runs every combination: a policy comparison at an equal
budget (`mainrun-report --compare`), with each policy searched once per seed. `--replay` is the
controlled mode: it trains the configs of an existing study, in trial order and in full (no
pruning), so two settings (a code change, a lever, a worker count) are compared on identical
trials. Both print, per run: the wall time, the device-seconds (train + data preparation of every
trial), the share of them spent in setup before step 1 (compilation, graph capture), trials and
full-run equivalents per hour, and the best value.

`--inductor-cache empty` runs with a fresh, empty torch.compile cache, as on a fresh GPU machine;
the default uses the machine's cache as it is (warm after a first run).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .compare import device_seconds
from .config import RunConfig
from .errors import SearchError
from .report import as_number, compute_totals
from .search.run import WorkerPlacement
from .search.study import FINISHED
from .space import DATA_FIELDS
from .storage import StorageSettings

CACHE_CHOICES = ("as-is", "empty")


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """These environment variables for the duration (spawned workers inherit them), then each
    back to what it was (unset if it was)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def inductor_cache(kind: str):
    """`empty`: torch.compile's caches in a new temporary folder for the duration (spawned
    workers inherit the variable); `as-is`: the machine's own."""
    if kind == "as-is":
        return contextlib.nullcontext()
    return environment({"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="mainrun-inductor-")})


class MpsWatch:
    """Asks the MPS control daemon for its servers every few seconds, from a thread, while the
    bench runs: a CUDA program that cannot reach the daemon runs without MPS and says nothing,
    so `served` is the check that some worker went through MPS."""

    POLL_SECONDS = 2.0

    def __init__(self, control: str) -> None:
        self.control = control
        self.servers_seen: set[str] = set()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="mps-poll", daemon=True)
        self._poller.start()

    @property
    def served(self) -> bool:
        return bool(self.servers_seen)

    def command(self, line: str) -> str:
        return subprocess.run([self.control], input=line + "\n", capture_output=True, text=True, timeout=60).stdout

    def _look(self) -> None:
        self.servers_seen.update(self.command("get_server_list").split())

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._look()

    def stop(self) -> None:
        self._stop.set()
        self._poller.join()
        self._look()


@contextlib.contextmanager
def cuda_mps():
    """CUDA MPS for the duration: one control daemon, its pipes and logs in a new temporary folder
    that the spawned workers find through the environment, so that their CUDA contexts share
    the GPU through one MPS server instead of time-slicing it. Yields the MpsWatch that says
    whether any worker went through it; the daemon is told to quit at the end."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise SearchError("--mps: CUDA MPS is not on this machine (no nvidia-cuda-mps-control on the PATH)")
    folder = Path(tempfile.mkdtemp(prefix="mainrun-mps-"))
    try:
        (pipe := folder / "pipe").mkdir()
        (log := folder / "log").mkdir()
        with environment({"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}):
            started = subprocess.run([control, "-d"], capture_output=True, text=True, timeout=60)
            if started.returncode != 0:
                raise SearchError(f"--mps: the MPS control daemon did not start (exit {started.returncode}): "
                                  f"{(started.stderr or started.stdout).strip() or 'no message'}")
            watch = MpsWatch(control)
            try:
                yield watch
            finally:
                watch.stop()
                watch.command("quit")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def studies_folder(studies: str | None, db_name: str, prefix: str) -> Path:
    """Where the bench's SQLite file and artifacts go: `studies` (made if need be; one that holds
    a bench file already is refused, since its studies would be resumed, not run again) or a new
    temporary folder."""
    if studies is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    folder = Path(studies).absolute()           # the printed storage URLs work from any folder
    if (folder / db_name).exists():
        raise SearchError(f"--studies {folder}: it holds {db_name} from an earlier bench, whose studies would be "
                          "resumed instead of run; give an empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"--studies {folder}: cannot make the folder ({e.strerror})") from None
    return folder


def search_throughput(space: str, dataset: str, trials: int, jobs: list[int], pruners: list[str | None],
                      seeds: list[int], device: str, cache_dir: str | None, cache: str = "as-is",
                      studies: str | None = None, samplers: list[str | None] = (None,)) -> list[dict]:
    """One fresh search per worker count, sampler, pruner and seed (None: the space's own), each
    a study in one SQLite file (in `studies`, or a scratch folder). Several samplers or pruners,
    each with several seeds, make a policy comparison (print_search_rows ends with the command
    that compares them at an equal budget, by policy)."""
    from .search import SearchOptions, run_search
    scratch = studies_folder(studies, "bench.db", "mainrun-bench-")
    storage = f"sqlite:///{scratch / 'bench.db'}"
    rows = []
    for n, sampler, pruner, seed in itertools.product(jobs, samplers, pruners, seeds):
        # a part of the name only where the bench varies it, so a plain bench keeps 'bench-jobsN'
        varied = [sampler if len(samplers) > 1 else None, pruner if len(pruners) > 1 else None,
                  f"seed{seed}" if len(seeds) > 1 else None]
        name = "-".join([f"bench-jobs{n}", *filter(None, varied)])
        opts = SearchOptions(space=space, trials=trials, storage=StorageSettings(storage), study=name,
                             dataset=dataset, device=device, jobs=n, seed=seed, sampler=sampler, pruner=pruner,
                             cache_dir=cache_dir, artifacts=str(scratch / "artifacts"))
        with inductor_cache(cache):
            start = time.perf_counter()
            code = run_search(opts).exit_code
            wall = time.perf_counter() - start
        rows.append({**search_row(" ".join(["search jobs", str(n), *filter(None, varied)]), n, storage, name, wall,
                                  code, cache), "sampler": sampler, "pruner": pruner, "seed": seed})
        print(json.dumps(rows[-1]), flush=True)
    print(f"(studies kept in {scratch / 'bench.db'})")
    return rows


# ---------------------------------------------------------------------- the controlled mode
@dataclass
class ReplayPlacement(WorkerPlacement):
    """The replay's workers: `jobs` of them on one device."""
    device: str = "auto"
    jobs: int = 1
    storage: StorageSettings = field(default_factory=StorageSettings)
    gpus: list[int] | None = None
    jobs_per_gpu: int = 1
    memory_budget_gib: float | None = None


def replayed_configs(source_storage: str, source_study: str, first: int | None = None) -> list[tuple[int, dict]]:
    """(trial number, config) of every trial of the study that recorded its config, in trial
    order: the fixed list a controlled comparison trains."""
    from .storage import open_study_readonly
    study = open_study_readonly(source_storage, source_study)
    configs = [(t.number, t.user_attrs["config"]) for t in study.get_trials(deepcopy=False)
               if isinstance(t.user_attrs.get("config"), dict)]
    if not configs:
        raise SearchError(f"study '{source_study}' holds no trial with a recorded config to replay")
    return configs[:first] if first else configs


def replay_throughput(source_storage: str, source_study: str, dataset: str, jobs: list[int], device: str,
                      cache_dir: str | None, first: int | None = None, cache: str = "as-is",
                      studies: str | None = None) -> list[dict]:
    """Train the source study's configs (on `dataset`, in trial order, in full) once per worker
    count, each in a fresh scratch study: the same trials under every setting."""
    from .confirm.run import ConfirmObjective
    from .data import prepare_data
    from .search.workers import run_rounds
    from .storage import open_storage

    configs = [(n, {**cfg, "dataset": dataset}) for n, cfg in replayed_configs(source_storage, source_study, first)]
    base = RunConfig.from_dict(configs[0][1], source=f"trial {configs[0][0]} of study '{source_study}'")
    for number, cfg in configs:
        if any(cfg.get(k, getattr(base, k)) != getattr(base, k) for k in DATA_FIELDS):
            raise SearchError(f"trial {number} of study '{source_study}' prepares other data than trial "
                              f"{configs[0][0]} ({', '.join(DATA_FIELDS)}); replay a study of one dataset")
    scratch = studies_folder(studies, "replay.db", "mainrun-replay-")
    data = prepare_data(base, cache_dir)
    storage = f"sqlite:///{scratch / 'replay.db'}"
    rows = []
    for n in jobs:
        where = ReplayPlacement(device=device, jobs=n, storage=StorageSettings(storage))
        devices = where.worker_devices(where.uses_gpu())
        study = optuna.create_study(study_name=f"replay-jobs{n}", storage=open_storage(where.storage),
                                    direction="minimize")
        for number, cfg in configs:
            study.enqueue_trial({}, user_attrs={"config": cfg, "train_seed": cfg.get("train_seed"),
                                                "replays": f"trial {number} of study '{source_study}'"})
        objective = ConfirmObjective(base, data.titles_sha256, cache_dir)     # trains the config a trial carries
        with inductor_cache(cache):
            start = time.time()
            contexts = where.worker_contexts(objective, study, len(configs), devices, scratch / "artifacts", start,
                                             enqueued_only=True)
            code = run_rounds(study, contexts, len(configs), print, command="replay")
            wall = time.time() - start
        rows.append(search_row(f"replay jobs {n}", n, storage, study.study_name, wall, code, cache))
        print(json.dumps(rows[-1]), flush=True)
    print(f"(studies kept in {scratch / 'replay.db'})")
    return rows


# ---------------------------------------------------------------------- the figures
def search_row(name: str, jobs: int, storage: str, study_name: str, wall: float, code: int, cache: str) -> dict:
    """What a search (or a replay) cost and found, from its trials."""
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
    full_runs = sum(t.user_attrs.get("steps", 0) / t.user_attrs["max_steps"]
                    for t in finished if t.user_attrs.get("max_steps"))
    spent = sum(device_seconds(t) for t in trials)
    setup = sum(as_number(t.user_attrs.get("setup_seconds")) for t in trials)
    # a compiled trial whose worker had kept its shape from an earlier trial traced no graph
    kept = [t.user_attrs["setup_seconds"] for t in finished if t.user_attrs.get("traced_graphs") == 0]
    traced = [t.user_attrs["setup_seconds"] for t in finished if t.user_attrs.get("traced_graphs")]
    return {"run": name, "jobs": jobs, "storage": storage, "study": study_name, "exit_code": code,
            "inductor_cache": cache, "finished": len(finished),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "wall_s": wall, "device_s": spent,
            "setup_s": setup, "setup_share": setup / spent if spent else None,
            "kept_shape_trials": len(kept), "kept_setup_median_s": statistics.median(kept) if kept else None,
            "traced_trials": len(traced), "traced_setup_median_s": statistics.median(traced) if traced else None,
            "trials_per_hour": 3600 * len(finished) / wall, "full_runs_per_hour": 3600 * full_runs / wall,
            "best": min(complete) if complete else None,
            "devices": compute_totals(finished).devices}


def print_search_rows(rows: list[dict]) -> None:
    width = max([16, *(len(r["run"]) + 2 for r in rows)])
    print(f"\n{'run':<{width}}{'cache':>7}{'finished':>9}{'pruned':>7}{'failed':>7}{'wall s':>9}{'device s':>10}"
          f"{'setup %':>8}{'trials/h':>10}{'full runs/h':>12}{'best':>9}")
    for r in rows:
        share = "-" if r["setup_share"] is None else f"{100 * r['setup_share']:.1f}"
        best = "-" if r["best"] is None else f"{r['best']:.4f}"
        print(f"{r['run']:<{width}}{r['inductor_cache']:>7}{r['finished']:>9}{r['pruned']:>7}{r['failed']:>7}"
              f"{r['wall_s']:>9.1f}{r['device_s']:>10.1f}{share:>8}{r['trials_per_hour']:>10.1f}"
              f"{r['full_runs_per_hour']:>12.1f}{best:>9}")
    if devices := sorted({d for r in rows for d in r.get("devices", [])}):
        print(f"trained on: {', '.join(devices)}")
    for r in rows:
        if r.get("kept_shape_trials") and r.get("traced_trials"):
            print(f"{r['run']}: setup per trial (median) {r['traced_setup_median_s']:.2f} s in the "
                  f"{r['traced_trials']} that traced their graphs, {r['kept_setup_median_s']:.2f} s in the "
                  f"{r['kept_shape_trials']} whose worker had kept their shape from an earlier trial")
    if len({(r.get("sampler"), r.get("pruner"), r.get("seed")) for r in rows}) > 1:      # a policy comparison
        print("\ncompare them at an equal budget, by policy: mainrun-report --compare "
              f"{' '.join(r['study'] for r in rows)} --storage {rows[0]['storage']} --out compare/")
