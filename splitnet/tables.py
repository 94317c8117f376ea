"""Plain-text tables for the terminal: the spec, and (later) plans and verify results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from splitnet.model.spec import ModelSpec
from splitnet.partition.groups import communicators
from splitnet.partition.plan import Exchange, Placement, Plan
from splitnet.units import human


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A fixed-width table; columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])




def spec_table(spec: ModelSpec) -> str:
    rows = [
        (layer.name, layer.op, layer.groups, layer.connect or "-",
         "x".join(str(d) for d in layer.out_shape), f"{layer.params:,}", human(layer.flops))
        for layer in spec.layers
    ]
    rows.append(("total", "", "", "", "", f"{spec.total_params:,}", human(spec.total_flops)))
    head = f"{spec.name}: input {'x'.join(str(d) for d in spec.input_shape)}, default groups {spec.groups}"
    return head + "\n" + table(("layer", "op", "groups", "connect", "output", "params", "fwd FLOPs"),
                               rows, right=(2, 5, 6))


def _ranges(placement: Placement, devices: int) -> str:
    if not placement.shards:
        return "-"
    if placement.batch_split:
        return f"all ranks, 1/{devices} of the batch each"
    full = [s for s in placement.shards if s.cols is None]
    if len(placement.shards) == devices > 1 and len(full) == devices and len(
            {s.out for s in placement.shards}) == 1:
        return "all ranks (replicated)"
    parts = []
    for s in placement.shards:
        text = f"{s.rank}:{s.out[0]}-{s.out[1]}"
        if s.cols is not None:
            text += f" (cols {s.cols[0]}-{s.cols[1]})"
        parts.append(text)
    return " ".join(parts)


def _exchange(ex: Exchange | None) -> tuple[str, str, str]:
    if ex is None:
        return "", "", ""
    groups = " ".join("{" + ",".join(str(r) for r in g) + "}" for g in ex.groups) or "replicas"
    if ex.moves:  # a halo: who sends whom which channels (the pairs that talk, said more precisely)
        groups = " ".join(f"{src}>{dst}:{a}-{b}" for src, dst, (a, b) in ex.moves)
    what = f"{ex.mode}: {ex.collective}/{ex.backward} {groups}"
    if ex.uneven:  # the collective pads every part to the largest; the bytes are the padded ones
        what += f" parts {ex.uneven}"
    return what, human(round(ex.bytes_fwd), "B"), human(round(ex.bytes_bwd), "B")


def _communicators(plan: Plan) -> str:
    counts = sorted({communicators(plan, r) for r in range(plan.devices)})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def plan_table(plan: Plan) -> str:
    head = (f"{plan.model}: {plan.strategy} over {plan.devices} device(s) x {plan.replicas} replica(s), "
            f"batch {plan.batch_size} per replica"
            + (f", {plan.microbatches} micro-batches, {plan.schedule} schedule" if plan.strategy == "pipeline" else ""))
    rows = []
    for p in plan.layers:
        what, fwd, bwd = _exchange(p.exchange)
        stage = str(p.stage) if plan.strategy == "pipeline" and p.shards else ""
        rows.append((p.name, p.op, stage, _ranges(p, plan.devices), what, fwd, bwd))
    header = ["layer", "op", "stage", "shards (rank:channels)", "exchange", "bytes in fwd", "bytes in bwd"]
    if plan.strategy != "pipeline":
        header.pop(2)
        rows = [r[:2] + r[3:] for r in rows]
    layers = table(header, rows, right=(len(header) - 2, len(header) - 1))
    dev_rows = [(c.rank, f"{c.param_count:,}", human(c.param_bytes, "B"), human(c.memory_bytes, "B"),
                 human(c.activation_bytes, "B"), human(c.flops), human(c.bytes_in, "B"))
                for c in plan.costs]
    devices = table(["rank", "params", "param bytes", "memory", "of it activations", "FLOPs/step",
                     "bytes in/step"], dev_rows, right=(1, 2, 3, 4, 5, 6))
    totals = (f"totals: {plan.model_params:,} model parameters, {human(plan.total_exchange_bytes, 'B')} "
              "received per step by the devices of one replica (bytes in: ring accounting, per device); "
              f"process groups (NCCL communicators) per rank: {_communicators(plan)}")
    parts = [head, "", layers, "", devices, "", totals, plan.rationale]
    if plan.candidates:
        parts += ["", candidates_table(plan)]
    return "\n".join(parts)


def candidates_table(plan: Plan) -> str:
    rows = []
    for c in plan.candidates:
        options = " ".join(f"{k}={v}" for k, v in c["options"].items())
        if "error" in c:
            rows.append((c["strategy"], options, "-", "-", "-", "-", "invalid: " + c["error"][:60]))
            continue
        rows.append((c["strategy"], options, f"{c['step_s'] * 1e3:.2f}", f"{c['compute_s'] * 1e3:.2f}",
                     f"{c['comm_s'] * 1e3:.2f}", human(c["memory_bytes"], "B"),
                     ("chosen" if c.get("chosen") else "fits") if c["fits"] else "does not fit"))
    return "candidates:\n" + table(["strategy", "options", "step ms", "compute ms", "comm ms",
                                    "memory/device", ""], rows, right=(2, 3, 4, 5))


def verify_table(report: dict[str, Any]) -> str:
    head = (f"verify {report['model']}: {report['strategy']} over {report['mesh']['devices']} device(s) x "
            f"{report['mesh']['replicas']} replica(s), {report['steps']} SGD steps at batch "
            f"{report['batch_size']} per replica")
    diffs = table(["compared", "max abs diff", "max rel diff", "closest to its tolerance", "diff/tolerance", ""],
                  [(k, f"{report['max_abs_diff'][k]:.3g}", f"{report['max_rel_diff'][k]:.3g}",
                    report["worst"][k]["where"], f"{report['worst'][k]['diff_over_tolerance']:.3g}",
                    "ok" if report["worst"][k]["diff_over_tolerance"] <= 1.0 else "DIFFERENT")
                   for k in ("logits", "loss", "grads", "params")], right=(1, 2, 4))
    ex = table(["exchange", "planned bytes/step", "measured bytes/step", "calls/step", ""],
               [(e["layer"], f"{e['planned_bytes']:,}", f"{e['measured_bytes']:,}", e["calls"],
                 "ok" if e["ok"] else "MISMATCH: " + "; ".join(e["mismatches"])) for e in report["exchanges"]],
               right=(1, 2, 3))
    pb = table(["rank", "planned param bytes", "allocated", ""],
               [(r["rank"], f"{r['planned']:,}", f"{r['allocated']:,}",
                 "ok" if r["planned"] == r["allocated"] else "MISMATCH") for r in report["param_bytes"]],
               right=(1, 2))
    verdict = ("OK: the split equals the reference, and every collective was handed the tensor sizes the plan "
               "expects (bytes by the planner's ring_bytes)") if report["ok"] else "FAILED"
    return "\n".join([head, "", diffs, "", ex or "(no exchanges)", "", pb, "", verdict])
