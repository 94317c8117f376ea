"""What one rank holds over a training step, and its peak: the cost model's memory.

A pure walk over the plan that follows what torch's autograd keeps (measured with
``splitnet profile``; the figures below are torch 2.x's CPU and CUDA kernels):

- held all step: parameters, momentum, the replica's input batch (float images and
  int64 labels: every rank of a model-parallel group is handed the whole batch);
- saved in forward, per layer, at this rank's rows: conv and linear keep their input
  (the tensor their exchange assembled, when there is one); ReLU keeps its output;
  LRN keeps its input and two more tensors of that size (the power's input and output:
  ``model/layers.lrn`` sums its window from slices that nothing keeps); rnorm keeps its
  input and two more tensors of that size (the denominator and its power); max-pool keeps
  its input and int64 indices of its output; average pooling keeps nothing; dropout keeps
  a one-byte mask of its slice; flatten keeps nothing. A tensor two ops keep is counted
  once. An LRN whose tower spans devices keeps only its own channels and the window's
  reach beyond them (received from its neighbours). The loss keeps the log-softmax of the
  (gathered) logits.
- backward, layer by layer from the last: the parameter gradients made so far, the
  layer's output gradient, its input gradient (for an exchange, the assembled tensor's
  gradient and its reduce-scatter copy), while the saved tensors of the later layers
  are already released;
- the optimizer step: gradients complete, plus weight decay's copy of the largest
  parameter tensor; gradient sums over buckets: one flat copy of the summed gradients.

The peak is the largest of those moments. A columns step in chunks holds the backward
temporaries of its chunked layers for one chunk at a time, beside the other chunks'
output gradient of the layer. A pipeline stage under GPipe keeps every
micro-batch's saved tensors until backward starts (together, the whole batch); its
first backward runs on one micro-batch while the others' saved tensors still wait, so
that is where its peak lies. A stage that sends on also keeps its outputs for that
backward, and a stage that receives keeps its inputs. Under 1F1B stage s holds at most
k = min(M, D - s) micro-batches (``in_flight``): its peak is a steady-state backward
with k micro-batches' saved tensors, inputs and outputs; when there is a steady phase
(M > D - s) that backward is not the stage's first, so every parameter gradient exists
already (each layer's new one is a temporary added into it), and the previous
micro-batch's input gradient waits until the stage before has taken it. The last stage
keeps every micro-batch's logits (the step returns them) and the log-softmax of those in
flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from splitnet.model.spec import Layer, ModelSpec
from splitnet.partition.plan import Placement, Shard, in_chunks

INDEX_BYTES = 8  # max-pool indices and class labels are int64
MASK_BYTES = 1   # a dropout mask is bool
# Temporaries an op's backward makes beyond its input and output gradients, in units of
# its output (LRN's backward runs the chain of pow, div and the padded average pool).
BACKWARD_TEMP = {"lrn": 3, "rnorm": 3}


@dataclass(frozen=True)
class Held:
    """A rank's predicted bytes at its peak, by kind (parameters, gradients and momentum
    are the shard's; ``peak`` is what the allocator will report at most)."""

    input: int
    saved: int
    peak: int
    peak_at: str  # "backward of <layer>", or "optimizer step"


def _width(shard: Shard) -> int:
    return shard.out[1] - shard.out[0]


def _talks(p: Placement, rank: int) -> bool:
    ex = p.exchange
    return ex is not None and (group := ex.group_of(rank)) is not None and len(group) > 1


def in_flight(schedule: str, microbatches: int, devices: int, stage: int) -> int:
    """The most micro-batches whose saved tensors pipeline stage ``stage`` holds at once."""
    return min(microbatches, devices - stage) if schedule == "1f1b" else microbatches


def held_bytes(spec: ModelSpec, placements: list[Placement], rank: int, batch: int, devices: int,
               microbatches: int, dtype_bytes: int, param_bytes: dict[str, int], schedule: str = "gpipe",
               chunks: int = 1) -> Held:
    """Predicted input, saved-for-backward and peak bytes of model-parallel rank ``rank``.

    ``param_bytes[layer]``: the bytes of that layer's parameters on this rank; ``schedule``:
    a pipeline's micro-batch order (gpipe or 1f1b); ``chunks``: a columns step's chunks,
    whose layers' backward temporaries exist for one chunk at a time."""
    b = dtype_bytes
    input_bytes = batch * prod(spec.input_shape) * b + batch * INDEX_BYTES
    mine = [p for p in placements if p.shard(rank) is not None]
    names = {p.name for p in placements}
    saved: list[int] = []       # per layer, what its backward releases
    grads_in: list[int] = []    # per layer, its input gradient (and exchange copies) in backward
    grads_out: list[int] = []
    prev, prev_kept = input_bytes, True  # the tensor the next layer reads, and whether it is counted
    first, received = True, 0
    for p in mine:
        layer: Layer = spec.layer(p.name)
        shard: Shard = p.shard(rank)  # type: ignore[assignment]
        rows = p.rows(batch, devices, rank)
        spatial = prod(layer.out_shape[1:])
        width = _width(shard)
        out = rows * width * spatial * b
        keep = 0
        grad_in = prev
        if first and p.exchange is not None and p.exchange.mode == "send" and _talks(p, rank):
            received = batch * prod(layer.in_shape) * b  # every micro-batch's input, kept for backward
            prev, prev_kept = received, True
        first = False
        assembled = 0
        if _talks(p, rank) and p.exchange is not None and p.exchange.mode in ("gather", "batch"):
            parts = sum(p.exchange.parts_of(rank) or ())
            if p.exchange.mode == "batch":  # parts are rows of the whole input
                assembled = parts * prod(layer.in_shape) * b
            else:  # parts are channels (or features) of this rank's rows
                assembled = parts * rows * prod(layer.in_shape[1:]) * b
            grad_in = 2 * assembled + prev
        elif _talks(p, rank) and p.exchange is not None and p.exchange.mode == "halo":
            # own channels widened by the neighbours' (a new tensor); backward: its gradient and ours
            lo, hi = shard.reads or shard.out
            assembled = rows * (hi - lo) * prod(layer.in_shape[1:]) * b
            grad_in = assembled + prev
        elif _talks(p, rank) and p.exchange is not None and p.exchange.collective == "reduce_scatter":
            # backward all-gathers the output gradient: the whole partial output's size
            grad_in = prev + sum(p.exchange.parts_of(rank) or ()) * rows * spatial * b
        if layer.op == "lrn":
            if assembled:  # own channels plus the window's reach, as the halo brought them
                lo, hi = shard.reads or shard.out
                channels = hi - lo
                x = rows * channels * spatial * b
                keep += x + 2 * x
                out = x
            else:
                keep += (0 if prev_kept else prev) + 2 * out
            prev_kept = False  # LRN keeps its input, not the quotient it returns
        elif layer.weighted:
            keep += assembled if assembled else (0 if prev_kept else prev)
            prev_kept = False
        elif layer.op == "rnorm":
            keep += (0 if prev_kept else prev) + 2 * out
            prev_kept = False
        elif layer.op == "relu":
            keep += out
            prev_kept = True
        elif layer.op == "avgpool":
            prev_kept = False
        elif layer.op == "maxpool":
            keep += (0 if prev_kept else prev) + rows * width * spatial * INDEX_BYTES
            prev_kept = False
        elif layer.op == "dropout":
            keep += rows * width * spatial * MASK_BYTES
            prev_kept = False
        elif layer.op == "flatten":
            out = prev
        saved.append(keep)
        grads_in.append(grad_in)
        grads_out.append(out)
        prev = out
    # backward: one micro-batch's gradients at a time on a pipeline stage, while k of them
    # (every one under GPipe) keep their saved tensors
    share = microbatches
    k = in_flight(schedule, microbatches, devices, rank)
    # the whole logits and their log-softmax, on every rank that computes the loss
    last = spec.layers[-1].name
    computes_loss = any(p.name == last and (p.shard(rank) is not None) for p in placements)
    logits = batch * prod(spec.layers[-1].out_shape) * b if computes_loss else 0
    forward = sum(saved) * k // share + logits + logits * k // share
    # a pipeline stage that sends on keeps each held micro-batch's output for its backward,
    # and receives one output gradient at a time
    sends = any(p.exchange is not None and p.exchange.mode == "send" and p.exchange.groups[0][0] == rank
                for p in placements)
    handed_on = prev if sends else 0
    # 1F1B with a steady phase: its peak backward is not the stage's first, so every
    # parameter gradient already exists, and the previous input gradient is still on its way
    steady = k < share
    waiting_grad = received // share if steady else 0
    params = sum(param_bytes.values())
    # parameters, momentum, the batch, the held micro-batches' inputs and outputs
    fixed = 2 * params + input_bytes + (received + handed_on) * k // share + waiting_grad
    live, grads = forward, params if steady else 0
    best = (fixed + forward, "end of forward")
    chunked = set(in_chunks(placements)) if chunks > 1 else set()
    largest_chunk = -(-batch // chunks)
    for p, keep, g_in, g_out in zip(reversed(mine), reversed(saved), reversed(grads_in), reversed(grads_out),
                                    strict=True):
        grads += 0 if steady else param_bytes.get(p.name, 0)
        temp = (g_in + g_out + BACKWARD_TEMP.get(p.op, 0) * g_out + handed_on) // share
        if p.name in chunked:  # this chunk's temporaries, and the other chunks' output gradient
            temp = temp * largest_chunk // batch + g_out * (batch - largest_chunk) // batch
        if steady:  # a weight gradient made anew, then added into the one that exists
            temp += param_bytes.get(p.name, 0)
        best = max(best, (fixed + live + grads + temp, f"backward of {p.name}"))
        live -= keep // share  # the first micro-batch's backward releases its share only
    largest = max((param_bytes.get(p.name, 0) for p in mine), default=0)
    buckets = params if "replicas" in names else 0
    buckets += sum(param_bytes.get(p.name, 0) for p in mine if p.batch_split) if "conv_grads" in names else 0
    best = max(best, (fixed + params + max(largest, buckets), "optimizer step"))
    return Held(input_bytes, forward, *best)
