#!/usr/bin/env bash
# The experiment suite in one command: every sweep of conf/experiment/ (but the 2012 ImageNet
# run), each one's report, and the verdicts on the paper's claims.
#   docs/experiments/run_all.sh [RUNS_DIR] [override ...]
#   docs/experiments/run_all.sh runs/suite                                # the embedded digits
#   docs/experiments/run_all.sh runs/cifar data=cifar10 data.root=/path   # CIFAR-10 shards
#   JOBS=2 docs/experiments/run_all.sh runs/suite                         # two sweeps at a time
# SWEEPS="augment dropout" picks some sweeps; REPORTS (default RUNS_DIR/reports) is where the
# reports and verdicts.json go (the committed ones: REPORTS=docs/experiments). One process
# thread per rank (launcher.threads=1): the same numbers on any machine, and on a shared one
# far faster than threads that wait on each other. JOBS=N trains up to N sweeps at once, one
# core per rank (towers and strategies have 2 ranks); each one's progress then goes to
# RUNS_DIR/NAME.log and this script prints when it starts and ends. A sweep already in
# RUNS_DIR is resumed: runs that finished are not retrained (train.resume=auto).
set -euo pipefail
runs=${1:-runs/suite}
shift || true
reports=${REPORTS:-$runs/reports}
jobs=${JOBS:-1}
if ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
    echo "run_all: JOBS=$jobs: give the number of sweeps to train at once (1 or more)" >&2
    exit 2
fi
if [ "$jobs" -gt 1 ] && (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
    echo "run_all: JOBS=$jobs needs bash 5.1 or later (wait -n -p); this is $BASH_VERSION: use JOBS=1" >&2
    exit 2
fi
mkdir -p "$runs"

sweep() {  # train one sweep, then report what it holds; fails when the training failed
    local name=$1 status=0
    shift
    splitnet train -m "+experiment=$name" launcher.threads=1 "hydra.sweep.dir=$runs/$name" \
        'hydra.sweep.subdir=${hydra.job.override_dirname}' "$@" || status=$?
    splitnet report "$runs/$name" "out=$reports/$name" || status=$((status ? status : $?))
    return "$status"
}

failed=()
[ "$jobs" -le 1 ] || declare -A running=()  # pid -> sweep
collect_one() {        # wait for one sweep of those running; note it if it failed
    local pid status=0
    wait -n -p pid || status=$?
    echo "== ${running[$pid]} ended ($(date -u +%H:%M:%S)): exit $status"
    [ "$status" -eq 0 ] || failed+=("${running[$pid]}")
    unset "running[$pid]"
}
for name in ${SWEEPS:-augment dropout towers lrn_pool test_crops strategies depth_data}; do
    if [ "$jobs" -le 1 ]; then
        echo "== $name ($(date -u +%H:%M:%S))"
        sweep "$name" "$@" || failed+=("$name")
        continue
    fi
    while [ "${#running[@]}" -ge "$jobs" ]; do collect_one; done
    echo "== $name started ($(date -u +%H:%M:%S)): progress in $runs/$name.log"
    sweep "$name" "$@" > "$runs/$name.log" 2>&1 &
    running[$!]=$name
done
[ "$jobs" -le 1 ] || while [ "${#running[@]}" -gt 0 ]; do collect_one; done
verdict=0
python -m splitnet.report.verdict "$runs" "out=$reports/verdicts.json" || verdict=$?
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run_all: these sweeps failed: ${failed[*]} (their logs: $runs/NAME.log with JOBS > 1)" >&2
    exit 1
fi
exit "$verdict"
