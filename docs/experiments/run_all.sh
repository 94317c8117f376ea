#!/usr/bin/env bash
# The experiment suite in one command: every sweep of conf/experiment/ (but the 2012 ImageNet
# run), each one's report, and the verdicts on the paper's claims.
#   docs/experiments/run_all.sh [RUNS_DIR] [override ...]
#   docs/experiments/run_all.sh runs/suite                                # the embedded digits
#   docs/experiments/run_all.sh runs/cifar data=cifar10 data.root=/path   # CIFAR-10 shards
# SWEEPS="augment dropout" picks some sweeps; REPORTS (default RUNS_DIR/reports) is where the
# reports and verdicts.json go (the committed ones: REPORTS=docs/experiments). One process
# thread per rank (launcher.threads=1): the same numbers on any machine, and on a shared one
# far faster than threads that wait on each other. A sweep already in RUNS_DIR is resumed:
# runs that finished are not retrained (train.resume=auto).
set -euo pipefail
runs=${1:-runs/suite}
shift || true
reports=${REPORTS:-$runs/reports}
for name in ${SWEEPS:-augment dropout towers lrn_pool test_crops strategies depth_data}; do
    echo "== $name ($(date -u +%H:%M:%S))"
    splitnet train -m "+experiment=$name" launcher.threads=1 "hydra.sweep.dir=$runs/$name" \
        'hydra.sweep.subdir=${hydra.job.override_dirname}' "$@"
    splitnet report "$runs/$name" "out=$reports/$name"
done
python -m splitnet.report.verdict "$runs" "out=$reports/verdicts.json"
