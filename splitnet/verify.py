"""``splitnet verify``: prove a split equal to the single-device reference, and its
exchanges equal to the plan's, by running both.

The plan's ranks run K SGD-momentum steps as CPU processes (launcher=simulate) on
random batches of the spec's input shape; the reference runs the same K steps here.
Compared: logits and loss at every step, every parameter's gradient at every step, and
every parameter's change over the K steps (the initial values are equal by
construction); per rank and step, the meter's bytes at every layer against the plan's,
exactly (what "moves exactly what the plan says" means: see ``compare_traffic``).

Tolerance: float32 round-off. A split sums the same products in another order
(gathered vs grouped convolutions, partial sums reduced across ranks), so values differ
in the last bits. Each tensor is held against its own scale: it passes if
max|split - reference| <= ``verify.atol + verify.rtol * max|reference|`` over that
tensor (defaults 1e-9 and 1e-4; float32's epsilon is 1.2e-7, and a few thousand-term
sums lose a few hundred ulps at worst), plus 10x the network's own sensitivity.

That last term matters after the first update. The split's parameters after a step
differ from the reference's by round-off, and some networks amplify that: the 224
AlexNet at its N(0, 0.01) init moves conv1's gradient by 5% when its parameters move
by one ulp (measured on the reference alone), because near-zero activations sit at
ReLU kinks. So the reference also runs a second time with every parameter moved by up
to one ulp after each update; the spread between its two runs is what no split can be
expected to beat. Step 0 has no such spread and is held to round-off alone. The report
names the tensor closest to failing.

``train.precision=bf16``: both the split and the reference compute forward under bf16
autocast (float32 master weights), and every exchange must move exactly half the float32
bytes, as the plan says. Values are held to ``verify.rtol_bf16`` (3e-2: bf16's epsilon is
3.9e-3) plus the same sensitivity term, whose second reference run then also moves every
input by up to half a bf16 ulp: what bf16 rounding alone does to the network. For
alexnet_small at its init that is large for gradients (conv1's moves by ~27%, fc8's by
0.5%), so in bf16 the logits, the loss and the bytes are the sharp checks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from splitnet.comm.meter import compare_traffic
from splitnet.data.synthetic import random_batch
from splitnet.keys import is_number, need, need_int
from splitnet.model.seeding import stream_seed
from splitnet.model.spec import ModelSpec, load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import Plan


def verify_batch(spec: ModelSpec, seed: int, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole (all replicas) batch of step ``step``: N(0,1) images, uniform labels."""
    return random_batch(batch, spec.input_shape, spec.num_classes, seed, "verify", step)


def verify_worker(rank: int, world_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """One rank of a verify run (any launcher can call this)."""
    from splitnet.runtime import forward_backward, setup_rank

    vcfg = cfg["verify"]
    # TF32 would round CUDA matmuls to 10 mantissa bits: the split and the reference must not differ by that
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    me = setup_rank(cfg, rank, optim=vcfg)
    spec, plan, transport, shard, opt = me.spec, me.plan, me.transport, me.shard, me.optimizer
    batch = plan.batch_size
    steps = []
    for k in range(vcfg["steps"]):
        x, y = verify_batch(spec, cfg["seed"], k, batch * plan.replicas)
        rows = slice(transport.replica * batch, (transport.replica + 1) * batch)
        opt.zero_grad(set_to_none=True)
        transport.meter.reset()
        result = forward_backward(shard, x[rows].to(transport.device), y[rows].to(transport.device), transport,
                                  step=k)
        record: dict[str, Any] = {
            "grads": {n: p.grad.detach().cpu().clone() for n, p in shard.named_parameters() if p.grad is not None},
            "meter": transport.meter.reading(),
        }
        if result.logits is not None and transport.mp_rank == plan.output_rank:
            record["logits"], record["loss"] = result.logits.cpu(), result.loss.cpu()
        steps.append(record)
        opt.step()
    return {"rank": rank, "steps": steps,
            "params": {n: p.detach().cpu().clone() for n, p in shard.named_parameters()},
            "param_bytes": sum(p.numel() * p.element_size() for p in shard.parameters())}


SENSITIVITY_MARGIN = 10.0


def _reference_run(spec: ModelSpec, plan: Plan, cfg: dict[str, Any], perturb: bool) -> dict[str, Any]:
    """The reference's K steps on the whole batch: logits, loss and gradients per step, and the
    parameters' change. ``perturb`` moves every parameter by up to one float32 ulp after each
    update: the spread between the two runs is the network's own sensitivity to round-off
    (deep nets at a small init amplify a one-ulp change at ReLU kinks; see the docstring)."""
    from splitnet.model.layers import set_step
    from splitnet.model.reference import build_reference
    from splitnet.runtime import sgd

    vcfg = cfg["verify"]
    model = build_reference(spec, cfg["seed"]).train()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = sgd(model.parameters(), vcfg)
    total = plan.batch_size * plan.replicas
    gen = torch.Generator().manual_seed(stream_seed(cfg["seed"], "verify", "perturb"))
    steps = []
    bf16 = plan.dtype_bytes == 2
    for k in range(vcfg["steps"]):
        x, y = verify_batch(spec, cfg["seed"], k, total)
        if perturb and bf16:  # bf16 rounds the inputs of every op: move them by up to half its ulp
            x = x * (1.0 + torch.randint(-1, 2, x.shape, generator=gen).float() * 2.0**-9)
        opt.zero_grad(set_to_none=True)
        set_step(model, k, 0, total)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the split computes
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        steps.append({"logits": logits.detach(), "loss": loss.detach(),
                      "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
        opt.step()
        if perturb:
            with torch.no_grad():
                for p in model.parameters():
                    ulps = torch.randint(-1, 2, p.shape, generator=gen).float()
                    p.mul_(1.0 + ulps * torch.finfo(torch.float32).eps)
    change = {n: p.detach() - initial[n] for n, p in model.named_parameters()}
    return {"steps": steps, "change": change, "initial": initial}


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    abs_diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return abs_diff, float(b.double().abs().max()) if b.numel() else 0.0


def check_verify(vcfg: dict[str, Any]) -> None:
    """The ``verify`` group, refused in one line before a rank starts."""
    need_int(vcfg, "verify", "steps", 1)
    need_int(vcfg, "verify", "batch_size", 1)
    for key, valid in (("lr", "> 0"), ("momentum", ">= 0 and < 1"), ("weight_decay", ">= 0"), ("rtol", ">= 0"),
                       ("atol", ">= 0")):
        value = vcfg.get(key)
        ok = is_number(value) and (value > 0 if key == "lr" else value >= 0) and (key != "momentum" or value < 1)
        need(ok, f"verify.{key}", value, f"must be a number {valid}")


def run_verify(cfg: dict[str, Any]) -> dict[str, Any]:
    from splitnet.launchers.simulate import launch
    from splitnet.runtime import merge_state
    from splitnet.train.preflight import check_comm, compute_bytes

    spec = load_spec(cfg["model"])
    vcfg = cfg["verify"]
    check_verify(vcfg)
    check_comm(cfg.get("comm", {}))
    mesh = Mesh.from_dict(cfg["mesh"])
    plan = make_plan(spec, cfg["partition"], mesh, vcfg["batch_size"], compute_bytes(cfg))
    job_cfg = {**cfg, "plan": plan.to_dict()}
    results = launch(verify_worker, mesh.world_size, job_cfg, timeout_s=cfg["comm"]["timeout_s"] + 60)

    ref = _reference_run(spec, plan, cfg, perturb=False)
    shaken = _reference_run(spec, plan, cfg, perturb=True)
    atol, rtol = vcfg["atol"], vcfg["rtol_bf16"] if plan.dtype_bytes == 2 else vcfg["rtol"]
    worst: dict[str, dict[str, Any]] = {k: {"abs": 0.0, "rel": 0.0, "ratio": 0.0, "tol": atol, "where": ""}
                                        for k in ("logits", "loss", "grads", "params")}

    def note(key: str, where: str, split: torch.Tensor, reference: torch.Tensor, other: torch.Tensor) -> None:
        # every tensor against its own scale (a wrong conv1 gradient must not hide under fc8's),
        # widened by how far the reference itself moves when its parameters move by one ulp
        d, scale = _diff(split, reference)
        tol = atol + rtol * scale + SENSITIVITY_MARGIN * _diff(other, reference)[0]
        w = worst[key]
        w["abs"] = max(w["abs"], d)
        w["rel"] = max(w["rel"], d / scale if scale else (0.0 if d == 0 else float("inf")))
        ratio = d / tol if tol > 0 else (0.0 if d == 0 else float("inf"))
        if ratio >= w["ratio"]:
            w.update(ratio=ratio, tol=tol, where=where)

    d = plan.devices
    for k in range(vcfg["steps"]):
        a, b = ref["steps"][k], shaken["steps"][k]
        outs = [results[r * d + plan.output_rank]["steps"][k] for r in range(plan.replicas)]
        note("logits", f"step {k}", torch.cat([o["logits"] for o in outs]), a["logits"], b["logits"])
        note("loss", f"step {k}", torch.stack([o["loss"] for o in outs]).mean(), a["loss"], b["loss"])
        for r in range(plan.replicas):
            merged = merge_state(plan, [results[r * d + m]["steps"][k]["grads"] for m in range(d)])
            for name, g in a["grads"].items():
                note("grads", f"{name} step {k} replica {r}", merged[name], g, b["grads"][name])
    for r in range(plan.replicas):
        merged = merge_state(plan, [results[r * d + m]["params"] for m in range(d)])
        for name, change in ref["change"].items():
            # the K steps' change: a bias of 1.0 must not hide an update of 1e-5
            note("params", f"{name} replica {r}", merged[name] - ref["initial"][name], change,
                 shaken["change"][name])

    values_ok = all(w["ratio"] <= 1.0 for w in worst.values())
    exchanges, traffic_ok = compare_traffic(plan, results)
    param_rows = [{"rank": res["rank"], "planned": plan.costs[res["rank"] % d].param_bytes,
                   "allocated": res["param_bytes"]} for res in results]
    params_ok = all(row["planned"] == row["allocated"] for row in param_rows)
    return {
        "ok": values_ok and traffic_ok and params_ok,
        "model": spec.name, "strategy": plan.strategy,
        "mesh": {"devices": plan.devices, "replicas": plan.replicas},
        "steps": vcfg["steps"], "batch_size": plan.batch_size,
        "max_abs_diff": {key: w["abs"] for key, w in worst.items()},
        "max_rel_diff": {key: w["rel"] for key, w in worst.items()},
        "tolerance": {key: w["tol"] for key, w in worst.items()},
        "worst": {key: {"where": w["where"], "diff_over_tolerance": w["ratio"]} for key, w in worst.items()},
        "exchanges": exchanges,
        "param_bytes": param_rows,
    }
