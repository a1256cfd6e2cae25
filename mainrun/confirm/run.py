"""mainrun-confirm from its options to its exit code: read the search study and choose its
finalists and the extra seeds (every check made before anything is created), prepare the data
the study was searched on, enqueue the missing (config, seed) runs in the companion study, run
them on the search's own worker machinery, print the table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from ..config import RunConfig
from ..data import prepare_data
from ..errors import ConfigError, DataError, InputsChanged, SearchError, TrialFailed
from ..search.console import Echo, say
from ..search.objective import TrialRunner, failed
from ..search.run import Searched, SearchOptions, WorkerPlacement, check_folder_can_be_made
from ..search.study import finished_count, tally
from ..search.workers import Objective, WorkerContext, optuna_quieted, run_rounds
from ..space import DATA_FIELDS, load_space
from ..storage import StorageSettings, artifact_dir, checkpoint_dir, open_storage, open_study_readonly
from .companion import SUFFIX, companion_name, enqueue_lock, enqueue_pairs, missing_pairs, open_companion, \
    read_companion
from .console import print_confirmation, print_plan, print_plan_after_search
from .finalists import DEFAULT_TOP, REFERENCES, Finalist, Plan, check_seed_list, official_seed, select_finalists, \
    train_seeds
from .results import read_confirmation


@dataclass
class ConfirmOptions(WorkerPlacement):
    study: str
    storage: StorageSettings = field(default_factory=StorageSettings)
    top: int | None = DEFAULT_TOP        # None: every complete config (an ablation study)
    against: str | None = None           # compare every config with this one (an ablation's base)
    seeds: int | None = None             # 1..seeds (default 3), or:
    seed_list: list[int] | None = None
    dataset: str | None = None           # another path to the same titles
    device: str = "auto"
    jobs: int = 1
    gpus: list[int] | None = None
    jobs_per_gpu: int = 1
    cache_dir: str | None = None
    artifacts: str | None = None
    memory_budget_gib: float | None = None

    @classmethod
    def after_search(cls, opts: SearchOptions, study_name: str, top: int) -> ConfirmOptions:
        """mainrun-search --confirm K: the search's best K, on the search's workers and data."""
        return cls(study=study_name, storage=opts.storage, top=top, dataset=opts.dataset, device=opts.device,
                   jobs=opts.jobs, gpus=opts.gpus, jobs_per_gpu=opts.jobs_per_gpu, cache_dir=opts.cache_dir,
                   artifacts=opts.artifacts, memory_budget_gib=opts.memory_budget_gib)

    def check(self) -> None:
        """What needs no study to refuse."""
        if self.top is not None and self.top < 1:
            raise SearchError(f"--top must be at least 1; got {self.top}")
        if self.seeds is not None and self.seed_list is not None:
            raise SearchError("give --seeds or --seed-list, not both")
        if self.seeds is not None and self.seeds < 1:
            raise SearchError(f"--seeds must be at least 1; got {self.seeds}")
        if self.seed_list is not None:
            check_seed_list(self.seed_list)


@dataclass
class ConfirmObjective:
    """A confirmation's trials as data: each trial names its config and train seed in its user
    attrs (the companion study enqueued it so), and is trained in full, never pruned. `base`
    carries the data fields every finalist shares, `titles_sha256` the titles it must find."""
    base: RunConfig
    titles_sha256: str
    cache_dir: str | None = None

    def build(self, study: optuna.Study, ctx: WorkerContext) -> Objective:
        try:
            data = prepare_data(self.base, self.cache_dir, log=lambda _m: None)       # a cache hit
        except (ConfigError, DataError) as e:
            raise InputsChanged(f"the confirmation's data no longer loads: {e}") from None
        if data.titles_sha256 != self.titles_sha256:
            raise InputsChanged(f"the dataset {self.base.dataset} changed while the confirmation ran; its runs would "
                                "not compare with the search's")
        study.pruner = optuna.pruners.NopPruner()
        run = TrialRunner(data, ctx)

        def objective(trial: optuna.Trial) -> float:
            attrs = trial.user_attrs
            if "config" not in attrs or "train_seed" not in attrs:    # only when machines race for the last run
                raise failed(trial, TrialFailed("no confirmation run was waiting: nothing to train"))
            try:
                cfg = RunConfig.from_dict(attrs["config"], source=f"confirmation trial {trial.number}")
            except ConfigError as e:
                raise failed(trial, TrialFailed(str(e))) from None
            return run(trial, cfg)
        return objective


def plan_confirm(opts: ConfirmOptions) -> Plan:
    """Every check that needs the studies, made read-only: an unknown study, one that is not a
    search's, seeds that clash with the official one."""
    opts.check()
    search = open_study_readonly(opts.storage.url, opts.study)
    if opts.study.endswith(SUFFIX) and "confirms_study" in search.user_attrs:
        raise SearchError(f"study '{opts.study}' holds a confirmation's runs; confirm the search study itself "
                          f"(--study {search.user_attrs['confirms_study']})")
    if "titles_sha256" not in search.user_attrs:
        raise SearchError(f"study '{opts.study}' was not made by mainrun-search (it records no dataset digest), "
                          "so its runs cannot be repeated on the same data")
    if search.direction != optuna.study.StudyDirection.MINIMIZE:
        raise SearchError(f"study '{opts.study}' maximises; mainrun's studies minimise val_loss")
    finalists, notes = select_finalists(search, opts.top)
    if opts.against is not None and opts.against not in {f.name for f in finalists}:
        raise SearchError(f"--against {opts.against}: not among the configs to confirm ("
                          + ", ".join(f.name for f in finalists) + "); name one of them, or raise --top")
    seeds = train_seeds(opts.seeds, opts.seed_list, {official_seed(f.config) for f in finalists})
    companion = read_companion(search)
    return Plan(search, finalists, seeds, missing_pairs(companion, finalists, seeds), notes, companion)


def data_config(plan: Plan, dataset: str | None) -> RunConfig:
    """The data every finalist trains on: their shared data fields (a search never samples them),
    read from `dataset` if given."""
    first = plan.finalists[0].config
    for f in plan.finalists[1:]:
        differ = [k for k in DATA_FIELDS if k != "dataset" and f.config.get(k) != first.get(k)]
        if differ:
            raise SearchError(f"{f.label} has another {differ[0]} than {plan.finalists[0].label}; "
                              "the finalists of one confirmation must share their data")
    return RunConfig.from_dict({**first, **({"dataset": dataset} if dataset else {}), "train_seed": None},
                               source=f"{plan.finalists[0].label}'s config")


def run_confirm(opts: ConfirmOptions, echo: Echo = say, dry_run: bool = False) -> int:
    """Run the missing runs of the confirmation and print its table; the exit code."""
    plan = plan_confirm(opts)
    for note in plan.notes:
        echo(f"confirm: {note}")
    if dry_run:
        print_plan(plan, echo)
        return 0
    gpu = opts.uses_gpu()
    devices = opts.worker_devices(gpu)
    base = data_config(plan, opts.dataset)
    data = prepare_data(base, opts.cache_dir, log=echo)
    searched_on = plan.search.user_attrs["titles_sha256"]
    if data.titles_sha256 != searched_on:
        raise SearchError(f"dataset {base.dataset}: its titles are not those study '{opts.study}' was searched on "
                          f"({plan.search.user_attrs.get('dataset')}); a confirmation must score the same "
                          "validation tokens. Give --dataset the same titles file")
    artifacts = artifact_dir(opts.storage.url, opts.artifacts)
    checkpoints = checkpoint_dir(opts.storage.url, opts.artifacts)        # a lost run's retry resumes from them
    check_folder_can_be_made(artifacts, "--artifacts")
    check_folder_can_be_made(checkpoints, "checkpoints")
    with optuna_quieted():
        storage = open_storage(opts.storage)
        search = optuna.load_study(study_name=opts.study, storage=storage)
        with enqueue_lock(opts.storage.url, opts.study):
            companion = open_companion(search, storage, opts.storage.url, echo)
            missing = missing_pairs(companion, plan.finalists, plan.seeds)
            enqueue_pairs(companion, missing, opts.study, base.dataset)
        _say_what_runs(plan, missing, echo)
        try:
            artifacts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchError(f"--artifacts {artifacts}: cannot make the folder ({e.strerror})") from None
        counts = tally(companion)
        trials = finished_count(companion) + counts[TrialState.WAITING] + counts[TrialState.RUNNING]
        code = 0
        if counts[TrialState.WAITING] or counts[TrialState.RUNNING]:
            objective = ConfirmObjective(base, searched_on, opts.cache_dir)
            contexts = opts.worker_contexts(objective, companion, trials, devices, artifacts, time.time(),
                                            enqueued_only=True, checkpoints=str(checkpoints))
            code = run_rounds(companion, contexts, trials, echo, command="confirm")
        confirmation = read_confirmation(search, companion, opts.against)
    print_confirmation(confirmation, opts.storage.url, echo, search)
    short = [f"{c.name} seed {s}" for c in confirmation.configs for s in plan.seeds
             if c.finalist.key in {f.key for f in plan.finalists} and s not in c.values]
    if code == 0 and short:
        echo(f"confirm: {len(short)} run(s) have no value ({', '.join(short[:4])}{', ...' if len(short) > 4 else ''}): "
             "see the table")
        code = 1
    return code


def confirm_after_search(opts: SearchOptions, searched: Searched, top: int, echo: Echo = say) -> int:
    """mainrun-search --confirm K: once the search has finished, confirm its best K configs and its
    references, on the search's workers. The exit code."""
    if searched.exit_code != 0:
        echo("confirm: not started, since the search did not finish")
        return searched.exit_code
    echo("")
    return run_confirm(ConfirmOptions.after_search(opts, searched.study_name, top), echo)


def plan_after_search(opts: SearchOptions, top: int, echo: Echo = say) -> None:
    """mainrun-search --dry-run --confirm K: what the confirmation would add to the search, at
    most (the finalists are not known before the search; a reference among the best counts once)."""
    space = load_space(opts.space, opts.sampler, opts.pruner)
    references = [label for label, _ in space.enqueue if label in REFERENCES]
    official = opts.base_config(space).effective_train_seed
    print_plan_after_search(top, references, train_seeds(None, None, {official}), echo)


def _say_what_runs(plan: Plan, missing: list[tuple[Finalist, int]], echo: Echo) -> None:
    total = len(plan.finalists) * len(plan.seeds)
    names = ", ".join(f.label for f in plan.finalists)
    echo(f"confirm: {len(plan.finalists)} config(s) ({names}) x train seeds {', '.join(map(str, plan.seeds))}: "
         f"{total} runs, {total - len(missing)} already in '{companion_name(plan.search.study_name)}', "
         f"{len(missing)} enqueued now")
