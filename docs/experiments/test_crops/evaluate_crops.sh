#!/bin/bash
# Experiment 7 as measured for the README: the centre crop vs the 10-crop average on the
# same checkpoints, those of finished experiment runs (no retraining). Usage:
#   docs/experiments/test_crops/evaluate_crops.sh OUT_DIR RUN_DIR...
# writes OUT_DIR/evaluations.jsonl (one `splitnet evaluate format=json` line per run and
# crop count, tagged with the run) and OUT_DIR/crops.png.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
: > "$out/evaluations.jsonl"
for run in "$@"; do
  for crops in 1 10; do
    # quoted for Hydra: sweep folders named by their overrides hold '=' and ','
    line=$(splitnet evaluate "ckpt='$run'" eval.crops=$crops format=json | tail -1)
    echo "{\"run\": \"$(basename "$run")\", \"crops\": $crops, \"result\": $line}" >> "$out/evaluations.jsonl"
    echo "$(basename "$run") crops=$crops: $line" >&2
  done
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
runs = list(dict.fromkeys(r["run"] for r in rows))
acc = {(r["run"], r["crops"]): 100 * r["result"]["top1"] for r in rows}
fig, ax = plt.subplots(figsize=(2 + 1.6 * len(runs), 4))
for k, crops in enumerate((1, 10)):
    ax.bar([i + 0.4 * k for i in range(len(runs))], [acc[(run, crops)] for run in runs], 0.4,
           label="centre crop" if crops == 1 else "10-crop average")
ax.set_xticks([i + 0.2 for i in range(len(runs))], [r.replace(",", "\n") for r in runs], fontsize=7)
ax.set_ylabel("held-out top-1 accuracy (%)")
ax.set_title("test-time crops on the same checkpoints")
ax.legend()
fig.tight_layout()
fig.savefig(out / "crops.png", dpi=100)
PY
