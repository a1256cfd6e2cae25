#!/usr/bin/env bash
# The evidence that one GPU session gathers for the open issues, as one prepared command, so that a
# session with a GPU spends its 15 minutes of device time on runs, not on writing scripts.
#
# On the CPU machine, from the project root:
#   ../shared/gpu/prepare.sh plotly optuna-dashboard bottle   # .gpu/: wheels + stand-in corpus, ~31 MiB
#   mkdir -p .gpu/resume && cp standin.db .gpu/resume/         # optional: go on with an earlier session's study
# Then the device tool's run, with carry [".gpu"] and timeout_s 600:
#   pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/whl/*.whl \
#     && export PYTHONPATH=$PWD/.gpu/site:$PWD && OUT=$OUT bash scripts/gpu_session.sh confirm runs
# and give the machine back when it returns. The report, the export and the tables need no GPU:
# they are made back on the CPU machine from the files it brings, not in device time. (The GPU
# image has scipy, jinja2 and narwhals; plotly, optuna-dashboard and bottle travel as wheels.)
#
# Steps (the arguments; default: confirm runs), in the brief's order: confirmation, fast search,
# better space. Each runs only while STEP_MIN_S of the budget is left, and is stopped (SIGTERM: the
# search records its running trials as failed and exits) when the budget runs out. The script exits
# 1 if a step did not exit 0, 2 on bad arguments.
#   confirm        #19  confirm-standin.yaml: the checked-in best, its no-QK-norm variant, report-003
#                       and report-000 on the official seed, then each on train seeds 1, 2, 3 (16 runs)
#   runs           #20  per-run times cold and warm, and bf16 against fp32: baseline, report-000,
#                       report-003 (python -m mainrun.bench --runs)
#   search-bench   #20  a 40-trial arch.yaml search from an empty inductor cache (--search)
#   ablate         #21  the 15 configs of ablate-best.yaml on the official seed
#   ablate-seeds   #21  each of them on train seeds 1, 2, 3, with the table against the best
#                       (45 runs: its own session, with ablate.db in .gpu/resume/)
# A rerun of a step with its study in .gpu/resume/ runs only what is missing.
#
# What comes back in $OUT, written as it goes, so that a run cut short still returns what finished
# (at most 8 files): each study's SQLite file (a consistent copy every 30 s and at each step's
# end), the bench's JSON rows, session.log (every command, its output and its time) and
# artifacts.tar.gz (trial logs and curves, for mainrun-report).
#
# Settings (environment): OUT (required), DATA (.gpu/data/standin_titles.txt), DEVICE (cuda),
# JOBS (6), BUDGET_S (540: the steps' share of a 600 s command), WORK (/tmp/mainrun-gpu),
# RESUME (.gpu/resume: studies to go on with).
# For a CPU dry run of the script itself (tests/test_gpu_session.py): CONFIRM_SPACE, SEARCH_SPACE,
# ABLATE_SPACE, ABLATE_TRIALS, SEARCH_TRIALS and RUNS_ARGS replace the real spaces and runs.
set -uo pipefail

: "${OUT:?set OUT to the folder whose files come back}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${DATA:-.gpu/data/standin_titles.txt}"
DEVICE="${DEVICE:-cuda}"
JOBS="${JOBS:-6}"
BUDGET_S="${BUDGET_S:-540}"
WORK="${WORK:-/tmp/mainrun-gpu}"
RESUME="${RESUME:-.gpu/resume}"
CONFIRM_SPACE="${CONFIRM_SPACE:-search_spaces/confirm-standin.yaml}"
SEARCH_SPACE="${SEARCH_SPACE:-search_spaces/arch.yaml}"
SEARCH_TRIALS="${SEARCH_TRIALS:-40}"
ABLATE_SPACE="${ABLATE_SPACE:-search_spaces/ablate-best.yaml}"
ABLATE_TRIALS="${ABLATE_TRIALS:-15}"
RUNS_ARGS="${RUNS_ARGS:---runs baseline:bf16,baseline:bf16,baseline:fp32,report-000:bf16,report-000:fp32,report-003:bf16,report-003:bf16}"
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(confirm runs)

KNOWN_STEPS=(confirm runs search-bench ablate ablate-seeds)
declare -A STEP_MIN_S=([confirm]=120 [runs]=90 [search-bench]=240 [ablate]=150 [ablate-seeds]=150)
for step in "${STEPS[@]}"; do
    [ -n "${STEP_MIN_S[$step]:-}" ] || { echo "error: unknown step '$step'; known: ${KNOWN_STEPS[*]}" >&2; exit 2; }
done
[ -f "$DATA" ] || { echo "error: no corpus at $DATA (../shared/gpu/prepare.sh puts it in .gpu/data/)" >&2; exit 2; }
DATA="$(realpath "$DATA")"

mkdir -p "$OUT" "$WORK"
LOG="$OUT/session.log"
START=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - START))); }
say() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*" | tee -a "$LOG"; }

# A study from an earlier session goes on where it stopped (the same command resumes it).
if compgen -G "$RESUME/*.db" >/dev/null; then
    cp -v "$RESUME"/*.db "$WORK/" | tee -a "$LOG"
fi

# The mainrun commands without an install (the GPU machine has the package on PYTHONPATH only):
# "${MAINRUN[@]}" search ... is mainrun-search ...
MAINRUN=(python -c 'import sys; from mainrun import cli; sys.exit(getattr(cli, sys.argv[1] + "_main")(sys.argv[2:]))')

snapshot() {   # a consistent copy of every study database (SQLite's online backup), into $OUT
    exec 9>"$WORK/.snapshot.lock" && flock 9      # the 30 s loop and a step's end take turns
    python - "$OUT" "$WORK"/*.db "$WORK"/*/*.db <<'PY' 2>>"$LOG"
import os, sqlite3, sys
from pathlib import Path
out = Path(sys.argv[1])
for db in map(Path, sys.argv[2:]):
    if db.is_file():           # copied beside, then renamed: a kill mid-copy leaves the last good copy
        part = out / f".{db.name}.part"
        src, dst = sqlite3.connect(db), sqlite3.connect(part)
        with dst:
            src.backup(dst)
        src.close(); dst.close()
        os.replace(part, out / db.name)
PY
    # trial logs and curves (checkpoints are large and only serve a resumed trial); exit 1 is
    # "a file changed as we read it", as a running trial's log does
    tar -czf "$OUT/artifacts.tar.gz.part" -C "$WORK" --exclude=checkpoints --exclude='*.db' --exclude='*.db-*' \
        --exclude='.snapshot.lock' . 2>/dev/null
    [ $? -le 1 ] && mv "$OUT/artifacts.tar.gz.part" "$OUT/artifacts.tar.gz"
    exec 9>&-
}
# The loop's sleep is killed with it: left running, it would hold the command's output open,
# and the command would end up to 30 s after the script.
( trap 'kill $nap 2>/dev/null; exit 0' TERM; while :; do sleep 30 & nap=$!; wait $nap; snapshot; done ) &
SNAPSHOTTER=$!
trap 'kill $SNAPSHOTTER 2>/dev/null; snapshot; say "done"' EXIT

run_step() {   # run_step NAME COMMAND...: under the time left, its output into the log
    local name=$1; shift
    local budget; budget=$(left)
    if [ "$budget" -lt "${STEP_MIN_S[$name]}" ]; then
        say "step $name: skipped, ${budget}s left (it needs ${STEP_MIN_S[$name]}s)"
        return
    fi
    local shown="$*"
    say "step $name: ${shown/"${MAINRUN[*]} "/mainrun-} (budget ${budget}s)"
    local t0=$SECONDS
    timeout -k 20 "$budget" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "step $name: exit $rc in $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
    snapshot
}

FAILED=()
storage() { echo "sqlite:///$WORK/$1.db"; }
# artifacts and checkpoints go beside each SQLite file, under $WORK
common=(--dataset "$DATA" --device "$DEVICE" --jobs "$JOBS")

say "steps: ${STEPS[*]}; budget ${BUDGET_S}s; device $DEVICE, $JOBS jobs; corpus $DATA"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"

for step in "${STEPS[@]}"; do
    case $step in
        confirm)
            run_step confirm "${MAINRUN[@]}" search --space "$CONFIRM_SPACE" --study standin --trials 4 --confirm 4 \
                --storage "$(storage standin)" "${common[@]}" ;;
        runs)
            # shellcheck disable=SC2086  # RUNS_ARGS is a list of arguments
            run_step runs python -m mainrun.bench --dataset "$DATA" --device "$DEVICE" $RUNS_ARGS --json "$OUT/runs.json" ;;
        search-bench)
            run_step search-bench python -m mainrun.bench "${common[@]}" --search "$SEARCH_SPACE" \
                --trials "$SEARCH_TRIALS" --inductor-cache empty --studies "$WORK/bench" --json "$OUT/search-bench.json" ;;
        ablate)
            run_step ablate "${MAINRUN[@]}" search --space "$ABLATE_SPACE" --study ablate --trials "$ABLATE_TRIALS" \
                --storage "$(storage ablate)" "${common[@]}" ;;
        ablate-seeds)
            run_step ablate-seeds "${MAINRUN[@]}" confirm --study ablate --top all --against best --seeds 3 \
                --storage "$(storage ablate)" "${common[@]}" ;;
    esac
done
[ ${#FAILED[@]} -eq 0 ] || { say "failed: ${FAILED[*]}"; exit 1; }
