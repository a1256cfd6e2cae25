"""Benchmark: full seven-epoch runs of known settings, with timings and throughput.

    python -m mainrun.bench --dataset titles.txt [--runs baseline:fp32,report-000:bf16] [--json out.json]
    python -m mainrun.bench --dataset titles.txt --base studies/best-standin.yaml \
        --ablate norm=rmsnorm --ablate pos_emb=rope --ablate decay_all=false,residual_init=scaled
    python -m mainrun.bench --dataset titles.txt --search search_spaces/arch.yaml --trials 40 --jobs 3 \
        [--inductor-cache empty]
    python -m mainrun.bench --dataset titles.txt --replay arch --replay-storage sqlite:///studies/mainrun.db --jobs 3
    python -m mainrun.bench --dataset titles.txt --search search_spaces/arch.yaml --trials 40 --jobs 6 \
        --pruner median,successive_halving,hyperband,patient --seed 0,1 --studies pruners/
    python -m mainrun.bench --dataset titles.txt --replay arch --replay-storage sqlite:///studies/mainrun.db --jobs 6 --mps
    python -m mainrun.bench --dataset titles.txt --runs baseline:bf16 --checkpoint
    python -m mainrun.bench --dataset titles.txt --soak 300 --storage postgresql+psycopg://user@host/db

For each run it prints data-prep seconds, training seconds, tokens/s, the achieved model
TFLOP/s and its fraction of the GPU's dense bf16 peak, the final validation loss, and the
estimated and measured peak memory. --search (a fresh search per --jobs value) and --replay (the
configs of an existing study, trained again in order and in full: the controlled comparison) print
a search's headline figures: wall time, device-seconds, setup share, trials and full-run
equivalents per hour, the best value (mainrun/bench_search.py). With --checkpoint it also prints
what a checkpoint save costs; --soak is the chaos soak of crash survival (mainrun/soak.py). A run
that fails (out of memory, a capture or compile error) is printed with its error, the others
still run, and the exit code is 1.
It is a benchmark, not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from .bench_search import CACHE_CHOICES, cuda_mps, print_search_rows, replay_throughput, search_throughput
from .checkpoint import CHECKPOINT_SHARE, Checkpointer, fingerprint
from .config import PRESETS, RunConfig, parse_overrides
from .data import prepare_data
from .errors import ConfigError, MainrunError
from .model import GPT
from .policy import PRUNERS, SAMPLERS
from .search.workers import share_cores_politely
from .storage import DEFAULT_STORAGE
from .memory import estimate_memory_bytes
from .train import resolve_device, steps_per_epoch, train

# Dense bf16 tensor-core peaks (datasheet, no sparsity), for the "fraction of peak" column.
# The first name contained in the device name wins, so the PCIe and NVL parts come first.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def flops_per_token(cfg: RunConfig, vocab_size: int) -> float:
    """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores."""
    model = GPT(cfg, vocab_size)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * matmul + 12.0 * cfg.n_layer * cfg.block_size * cfg.d_model


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def gpu_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def _comma_ints(parser: argparse.ArgumentParser, flag: str, raw: str, expected: str) -> list[int]:
    try:
        return [int(v) for v in raw.split(",")]
    except ValueError:
        parser.error(f"{flag} {raw!r}: expected {expected}")


def _policy_lists(parser: argparse.ArgumentParser, args) -> tuple[list, list, list[int]]:
    """--sampler, --pruner and --seed as lists (each value once: a repeat would resume its study)."""
    def names(flag: str, raw: str | None, known: dict) -> list[str | None]:
        if raw is None:
            return [None]                                    # the space's own
        values = raw.split(",")
        for v in values:
            if v not in known:
                parser.error(f"{flag} {v!r}: unknown; known: {', '.join(sorted(known))}")
        if len(set(values)) < len(values):
            parser.error(f"{flag} {raw!r}: each name once")
        return values
    seeds = _comma_ints(parser, "--seed", args.seed, "sampler seeds such as 0,1")
    if len(set(seeds)) < len(seeds):
        parser.error(f"--seed {args.seed!r}: each seed once (a repeated seed would resume the finished study)")
    return names("--sampler", args.sampler, SAMPLERS), names("--pruner", args.pruner, PRUNERS), seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mainrun.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--runs", default="baseline:bf16,report-003:bf16",
                        help="comma-separated PRESET[:PRECISION][:eager][:KEY=VALUE ...] (default: %(default)s); "
                             "eager turns CUDA-graph capture off, e.g. baseline:bf16:compile=model")
    parser.add_argument("--base", metavar="CONFIG",
                        help="ablation mode: run this config (a YAML file or a preset name), then each "
                             "--ablate variant of it")
    parser.add_argument("--ablate", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="with --base: one variant (repeatable), e.g. --ablate norm=rmsnorm")
    parser.add_argument("--search", metavar="SPACE",
                        help="instead: time a search of this space once per --jobs value")
    parser.add_argument("--replay", metavar="STUDY",
                        help="instead: train the configs of this study again, in trial order and in full, once per "
                             "--jobs value: a speed change measured on identical trials")
    parser.add_argument("--replay-storage", metavar="URL", help="with --replay: its storage (default: the default "
                                                                "study database)")
    parser.add_argument("--first", type=int, metavar="N", help="with --replay: only its first N configs")
    parser.add_argument("--inductor-cache", choices=CACHE_CHOICES, default="as-is",
                        help="with --search or --replay: empty runs from a fresh, empty torch.compile cache, as a "
                             "fresh GPU machine does (default: the machine's cache, as it is)")
    parser.add_argument("--studies", metavar="DIR",
                        help="with --search or --replay: keep the studies' SQLite file and artifacts in DIR (made if "
                             "need be; it must not hold an earlier bench's file) instead of a temporary folder")
    parser.add_argument("--trials", type=int,
                        help="with --search: trials per search (default: 8); with --soak: the finished trials the "
                             "study ends with (default: SECONDS / 2.5)")
    parser.add_argument("--jobs", default="1",
                        help="with --search or --replay: comma-separated worker counts (default: %(default)s)")
    parser.add_argument("--sampler", metavar="NAME[,NAME]",
                        help=f"with --search: replace the space's sampler; several ({', '.join(sorted(SAMPLERS))}) "
                             "compare samplers, one search each per seed")
    parser.add_argument("--pruner", metavar="NAME[,NAME]",
                        help=f"with --search: replace the space's pruner (none: every trial runs to the end); "
                             f"several ({', '.join(sorted(PRUNERS))}) compare pruners, one search each per seed")
    parser.add_argument("--seed", default="0", metavar="SEED[,SEED]",
                        help="with --search: sampler seed; several repeat each search once per seed "
                             "(default: %(default)s)")
    parser.add_argument("--mps", action="store_true",
                        help="with --search or --replay: run the workers through CUDA MPS (a control daemon started "
                             "for the bench and stopped after it), to measure whether MPS helps several workers "
                             "share one GPU")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N of the configs at once on the device, each in its own process: for val losses "
                             "(ablations) in less wall time; their times then share the device (default: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", help="write the rows here as JSON")
    parser.add_argument("--profile", metavar="RUN",
                        help="instead: profile one epoch of this run (a --runs entry, eager) and print the top "
                             "CUDA kernels")
    parser.add_argument("--checkpoint", action="store_true",
                        help="with --runs or --base: save a checkpoint at every evaluation and print what a save "
                             "costs (seconds, MiB, share of the run) and how often the default (2%% rule) saves")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: a chaos soak (mainrun/soak.py): --workers search workers on one study, one "
                             "SIGKILLed every few seconds for SECONDS, then the checks; needs --storage")
    parser.add_argument("--storage", help="with --soak: the study database (sqlite:///FILE or postgresql+psycopg://...)")
    parser.add_argument("--workers", type=int, default=8, help="with --soak: workers (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.soak is not None:
        if not args.storage:
            parser.error("--soak needs --storage (a fresh database, or one without a 'soak' study)")
        from .soak import soak
        try:
            return soak(args.soak, args.storage, args.dataset, args.trials or max(10, int(args.soak / 2.5)),
                        workers=args.workers, json_path=args.json)
        except MainrunError as e:
            parser.exit(2, f"error: {e}\n")
    if args.profile:
        try:
            cfg = _preset_config(args.profile, args.dataset, "--profile",
                                 cuda_graph=False, mainrun_rules=False, epochs=1)
        except ConfigError as e:
            parser.error(str(e))
        return profile(cfg, args.device, args.cache_dir)
    if args.search or args.replay:
        jobs = _comma_ints(parser, "--jobs", args.jobs, "worker counts such as 1,2,3")
        if min(jobs) < 1 or len(set(jobs)) < len(jobs):
            parser.error(f"--jobs {args.jobs!r}: each worker count at least 1, and each once (a repeated "
                         "count would resume the finished study)")
        samplers, pruners, seeds = _policy_lists(parser, args)
        try:
            with cuda_mps() if args.mps else contextlib.nullcontext() as mps:
                if args.replay:
                    rows = replay_throughput(args.replay_storage or DEFAULT_STORAGE, args.replay, args.dataset, jobs,
                                             args.device, args.cache_dir, args.first, args.inductor_cache,
                                             args.studies)
                else:
                    rows = search_throughput(args.search, args.dataset, args.trials or 8, jobs, pruners, seeds,
                                             args.device, args.cache_dir, args.inductor_cache, args.studies, samplers)
        except MainrunError as e:
            parser.exit(2, f"error: {e}\n")
        for r in rows:
            r["mps"] = bool(mps and mps.served)
        print_search_rows(rows)
        if mps:
            print(f"\nMPS: on ({len(mps.servers_seen)} MPS server(s) served the workers)" if mps.served else
                  "\nMPS: the daemon ran, but no worker went through it: these rows ran without MPS")
        _write_json(args.json, rows)
        return 0 if all(r["exit_code"] == 0 for r in rows) and (not mps or mps.served) else 1

    try:
        runs = _ablation_runs(args.base, args.ablate, args.dataset) if args.base else \
            [(spec, _preset_config(spec, args.dataset)) for spec in args.runs.split(",")]
    except ConfigError as e:
        parser.error(str(e))
    rows = measure_all(runs, args.device, args.cache_dir, args.parallel, args.checkpoint)

    reference = next((r["val_loss"] for r in rows if "error" not in r), float("nan"))
    print(f"\n{'run':<34}{'val_loss':>9}{'vs first':>9}{'data s':>8}{'train s':>9}{'setup s':>9}{'loop s':>8}{'tok/s':>12}"
          f"{'TFLOP/s':>9}{'%peak':>7}{'est MiB':>9}{'peak MiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['run']:<34} failed: {r['error']}")
            continue
        frac = f"{100 * r['peak_frac']:.1f}" if r["peak_frac"] else "-"
        peak_mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:,.0f}"
        print(f"{r['run']:<34}{r['val_loss']:>9.4f}{r['val_loss'] - reference:>+9.4f}{r['data_s']:>8.1f}"
              f"{r['train_s']:>9.1f}{r['setup_s']:>9.1f}{r['loop_s']:>8.1f}{r['tokens_per_s']:>12,.0f}{r['tflops']:>9.1f}{frac:>7}"
              f"{r['est_mem_mb']:>9,.0f}{peak_mem:>9}")
    if args.checkpoint:
        print_checkpoint_costs(rows)
    _write_json(args.json, rows)
    return 1 if any("error" in r for r in rows) else 0


def _ablation_runs(base_spec: str, ablations: list[str], dataset: str) -> list[tuple[str, RunConfig]]:
    """The base config (a preset name or a YAML file) and one variant of it per --ablate."""
    base = (RunConfig.from_dict(PRESETS[base_spec]) if base_spec in PRESETS
            else RunConfig.from_yaml(base_spec)).replace(dataset=dataset)
    return [("base", base)] + [(spec, base.replace(**parse_overrides(spec.split(","), "--ablate")))
                               for spec in ablations]


def _write_json(path: str | None, rows: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def _preset_config(spec: str, dataset: str, flag: str = "--runs", **extra) -> RunConfig:
    """PRESET[:PRECISION][:eager][:KEY=VALUE ...] as a run config on `dataset`, e.g.
    baseline:bf16:compile=model. eager turns CUDA-graph capture off."""
    preset, *fields = spec.split(":")
    if preset not in PRESETS:
        raise ConfigError(f"{flag} {spec!r}: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    precision = fields.pop(0) if fields and "=" not in fields[0] and fields[0] != "eager" else "auto"
    overrides = parse_overrides([f for f in fields if f != "eager"], f"{flag} {spec!r}")
    return RunConfig.from_dict({**PRESETS[preset], "dataset": dataset, "precision": precision,
                                "cuda_graph": "eager" not in fields, **overrides, **extra})


def measure_all(runs: list[tuple[str, RunConfig]], device: str, cache_dir: str | None, parallel: int,
                checkpoint: bool = False) -> list[dict]:
    """Every run, one after another or `parallel` at a time in spawned processes (each a
    fresh CUDA context); rows are printed as they finish and returned in the given order.
    A run that fails (out of memory, a capture or compile error) gets a row with its error,
    and the runs after it still run."""
    if parallel <= 1:
        rows = []
        for name, cfg in runs:
            rows.append(_measure_or_error(name, cfg, device, cache_dir, 1, checkpoint))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    done: dict[int, dict] = {}
    sharing = min(parallel, len(runs))
    if not resolve_device(device).type == "cuda":
        share_cores_politely()          # the spawned runs inherit it; thread counts and val losses stay
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=sharing, mp_context=spawn) as pool:
        futures = {pool.submit(_measure_or_error, name, cfg, device, cache_dir, sharing, checkpoint): i
                   for i, (name, cfg) in enumerate(runs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                done[i] = future.result()
            except Exception as e:                     # the worker process itself died
                done[i] = _error_row(runs[i][0], e)
            print(json.dumps(done[i]), flush=True)
    return [done[i] for i in range(len(runs))]


def _measure_or_error(name: str, cfg: RunConfig, device: str, cache_dir: str | None, sharing: int = 1,
                      checkpoint: bool = False) -> dict:
    try:
        return measure(name, cfg, device, cache_dir, sharing, checkpoint)
    except Exception as e:
        return _error_row(name, e)
    finally:
        gc.collect()                                   # what the failed run held, before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _error_row(name: str, error: BaseException) -> dict:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return {"run": name, "error": f"{type(error).__name__}: {first_line}", "gpu": gpu_name()}


def measure(name: str, cfg: RunConfig, device: str, cache_dir: str | None, sharing: int = 1,
            checkpoint: bool = False) -> dict:
    """One full run, and what it cost (with `checkpoint`: a save at every evaluation, timed)."""
    data = prepare_data(cfg, cache_dir)
    dev = resolve_device(device)
    estimate = estimate_memory_bytes(cfg, data.vocab_size, dev)
    with tempfile.TemporaryDirectory(prefix="mainrun-bench-ckpt-") as folder:
        saver = Checkpointer(Path(folder) / "run.pt", fingerprint(cfg, data, dev), share=None) if checkpoint else None
        result = train(cfg, data, device=dev, progress=False, echo=None, checkpoint=saver)
    tflops = flops_per_token(cfg, data.vocab_size) * result.steps * cfg.batch_size * cfg.block_size \
        / result.train_seconds / 1e12
    peak = gpu_peak(result.device_name)
    return {"run": name, "sharing_device_with": sharing - 1, "val_loss": result.val_loss,
            "data_s": data.prep_seconds, "data_cached": data.cached, "train_s": result.train_seconds,
            "setup_s": result.setup_seconds, "loop_s": result.train_seconds - result.setup_seconds,
            "traced_graphs": result.traced_graphs, "wall_s": result.train_seconds + data.prep_seconds,
            "tokens_per_s": result.tokens_per_second, "tflops": tflops,
            "peak_frac": tflops / peak if peak else None, "steps": result.steps,
            "steps_per_epoch": steps_per_epoch(cfg, len(data.train_ids)), "params": result.n_params,
            "peak_mem_mb": result.peak_memory_mb, "est_mem_mb": estimate / 2**20, "device": result.device,
            "gpu": result.device_name, **(checkpoint_costs(saver.saves, result.train_seconds) if saver else {})}


def checkpoint_costs(saves: list[tuple[float, int]], train_seconds: float) -> dict:
    """What checkpoints cost a run: per save (seconds, MiB), at every evaluation (share of the
    training), and under the default rule (a save only while saves stay within CHECKPOINT_SHARE of
    the training time so far: about CHECKPOINT_SHARE * T / s saves in a run of T seconds, one every
    s / CHECKPOINT_SHARE seconds, and never more than the evaluations)."""
    if not saves:
        return {"ckpt_saves": 0}
    seconds = sum(s for s, _ in saves) / len(saves)
    training = train_seconds - sum(s for s, _ in saves)           # the run without its saves
    return {"ckpt_saves": len(saves), "ckpt_save_s": seconds, "ckpt_mb": saves[-1][1] / 2**20,
            "ckpt_share_every_eval": sum(s for s, _ in saves) / training,
            "ckpt_default_saves": min(len(saves), int(CHECKPOINT_SHARE * training / seconds)),
            "ckpt_default_interval_s": seconds / CHECKPOINT_SHARE}


def print_checkpoint_costs(rows: list[dict]) -> None:
    print(f"\ncheckpoints (a save at every evaluation; the default saves only while saves stay within "
          f"{CHECKPOINT_SHARE:.0%} of the training time):")
    print(f"{'run':<34}{'saves':>6}{'s/save':>9}{'MiB':>9}{'% every eval':>13}{'default saves':>14}{'every s':>9}")
    for r in rows:
        if r.get("ckpt_saves"):
            print(f"{r['run']:<34}{r['ckpt_saves']:>6}{r['ckpt_save_s']:>9.3f}{r['ckpt_mb']:>9.1f}"
                  f"{100 * r['ckpt_share_every_eval']:>12.2f}%{r['ckpt_default_saves']:>14}"
                  f"{r['ckpt_default_interval_s']:>9.1f}")


def profile(cfg: RunConfig, device: str, cache_dir: str | None) -> int:
    """One epoch of `cfg` under torch.profiler (CUDA graphs off, so that each kernel is attributed)."""
    from torch.profiler import ProfilerActivity
    data = prepare_data(cfg, cache_dir)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        train(cfg, data, device=device, progress=False, echo=None)
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
