"""LRN: torch's ``F.local_response_norm`` against splitnet's ``model.layers.lrn`` (the same
values and gradients, bit for bit), per LRN layer of a model and over a whole training step.

For every LRN layer of the model: forward + backward at its input's shape; then one training
step of the single-device reference net with each implementation (cross-entropy, backward).
Rounds alternate the two implementations in one process, so load and caches fall on both
alike; the table gives the best of the rounds and the ratio torch / splitnet. Prints a
Markdown table, writes it as JSON and a bar chart beside it.

    python bench/bench_lrn.py [model=alexnet_small] [batch_size=32] [threads=1] [rounds=5]
        [reps=10] [out=bench/results/lrn-alexnet_small-b32] [reuse=true: redraw from out's lrn.json]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from splitnet.model import layers
from splitnet.model.reference import build_reference
from splitnet.model.spec import load_spec

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
IMPLEMENTATIONS = {"torch": F.local_response_norm, "splitnet": layers.lrn}


def seconds_per_call(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def draw(rows: list[dict], path: Path) -> None:
    """The table as bars, torch's beside splitnet's per case."""
    fig = Figure(figsize=(7, 1.0 + 0.5 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["torch_ms"] for r in rows], height=0.4, label="torch F.local_response_norm")
    ax.barh([y - 0.2 for y in ys], [r["splitnet_ms"] for r in rows], height=0.4, label="splitnet layers.lrn")
    ax.set_yticks(list(ys), [f"{r['case']}  ({r['ratio']:.2f}x)" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms, forward + backward (best of rounds)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    model, batch = opts.get("model", "alexnet_small"), int(opts.get("batch_size", 32))
    rounds, reps = int(opts.get("rounds", 5)), int(opts.get("reps", 10))
    torch.set_num_threads(int(opts.get("threads", 1)))
    out = Path(opts.get("out", f"bench/results/lrn-{model}-b{batch}"))
    out.mkdir(parents=True, exist_ok=True)
    if opts.get("reuse") == "true":  # redraw the picture from a run's table
        draw(json.loads((out / "lrn.json").read_text())["rows"], out / "lrn.png")
        return
    spec = load_spec(yaml.safe_load((CONF / f"{model}.yaml").read_text()))
    gen = torch.Generator().manual_seed(0)

    cases: dict[str, Callable[[Callable], Callable[[], object]]] = {}
    for layer in spec.layers:
        if layer.op != "lrn":
            continue
        per_group = layer.in_shape[0] // layer.groups
        shape = (batch * layer.groups, per_group, *layer.in_shape[1:])  # GroupLRN's view of its input
        x = torch.randn(shape, generator=gen).requires_grad_()
        grad = torch.randn(shape, generator=gen)

        def case(impl: Callable, x=x, grad=grad, layer=layer) -> Callable[[], object]:
            return lambda: torch.autograd.grad(impl(x, layer.size, layer.alpha, layer.beta, layer.k), x, grad)
        cases[f"{layer.name} {tuple(shape)}"] = case

    net = build_reference(spec, seed=0)
    images = torch.randn((batch, spec.input_shape[0], *spec.input_shape[1:]), generator=gen)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=gen)

    def step(impl: Callable) -> Callable[[], object]:
        def run() -> None:
            layers.lrn = impl  # GroupLRN and SegmentLRN look the function up at each call
            try:
                net.zero_grad(set_to_none=True)
                F.cross_entropy(net(images), labels).backward()
            finally:
                layers.lrn = IMPLEMENTATIONS["splitnet"]
        return run
    cases["training step"] = step

    times: dict[str, dict[str, list[float]]] = {name: {i: [] for i in IMPLEMENTATIONS} for name in cases}
    for r in range(rounds):
        for name, make in cases.items():
            for impl_name, impl in IMPLEMENTATIONS.items():
                times[name][impl_name].append(seconds_per_call(make(impl), reps))
        print(f"bench_lrn: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    rows = [{"case": name, **{f"{i}_ms": 1e3 * min(t[i]) for i in IMPLEMENTATIONS},
             "ratio": min(t["torch"]) / min(t["splitnet"])} for name, t in times.items()]
    lines = [f"LRN, {model}, batch {batch}, {torch.get_num_threads()} thread(s), best of {rounds} rounds x "
             f"{reps} forward+backward", "",
             "| case | torch ms | splitnet ms | torch / splitnet |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['torch_ms']:.1f} | {r['splitnet_ms']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    print("\n".join(lines))
    (out / "lrn.json").write_text(json.dumps({"model": model, "batch_size": batch,
                                              "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    (out / "lrn.md").write_text("\n".join(lines) + "\n")

    draw(rows, out / "lrn.png")
    print(f"bench_lrn: wrote {out / 'lrn.md'}, lrn.json, lrn.png", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
