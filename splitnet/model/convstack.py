"""AlexNet-style layer lists of any depth, for the experiments' one parametrised spec.

``conv_stack`` returns the ``layers`` of a two-tower network for 32x32 inputs laid out
like ``alexnet_small``: conv1 (5x5, connecting) and conv2 (5x5, per tower), each
followed by LRN and a max-pool, then ``depth - 2`` 3x3 convolutions (the first of them
connecting, the rest per tower, as conv3-conv5 in the paper) and a last pool, then
three fully-connected layers (dropout after the first two), numbered on from the last
conv. The knobs are the paper's ablations: ``lrn`` (section 3.3), ``pool`` 3
(overlapping 3/2, section 3.4) or 2 (plain 2/2), ``dropout`` (section 4.2) and its
``dropout_scale`` (``train``: inverted dropout; ``test``: the paper's, outputs times 1 - p
at test time), ``depth`` (section 7: depth matters).

Overlapping pools are padded by 1 so that 3/2 and 2/2 give the same map sizes
(32 -> 16 -> 8 -> 4) and the same parameter count: only the pooling differs. Pure data:
the experiment configs call it through the ``conv_stack`` OmegaConf resolver, which
configs.py registers for the CLI (the model package never imports OmegaConf).
"""

from __future__ import annotations

from typing import Any

from splitnet.errors import SplitnetError

POOLS = {3: {"kernel": 3, "stride": 2, "pad": 1}, 2: {"kernel": 2, "stride": 2, "pad": 0}}
_LRN = {"op": "lrn", "size": 5, "alpha": 1.0e-4, "beta": 0.75, "k": 2.0}


def conv_stack(depth: int = 5, lrn: bool = True, pool: int = 3, dropout: float = 0.5,
               classes: int = 10, dropout_scale: str = "train") -> list[dict[str, Any]]:
    """The layer list; depth 5 with the defaults is alexnet_small's topology (padded pools)."""
    if not isinstance(depth, int) or depth < 2:
        raise SplitnetError(f"arch.depth={depth!r}: the stack needs at least 2 convolutional layers "
                            "(conv1 and conv2); use an integer >= 2")
    if pool not in POOLS:
        raise SplitnetError(f"arch.pool={pool!r}; valid: 3 (overlapping 3/2 pooling) or 2 (2/2)")
    layers: list[dict[str, Any]] = []

    def conv(i: int, out: int, kernel: int, connect: str) -> None:
        layers.append({"name": f"conv{i}", "op": "conv", "out": out, "kernel": kernel, "pad": kernel // 2,
                       "connect": connect, **({} if connect == "full" else {"bias_init": 0.1})})
        layers.append({"name": f"relu{i}", "op": "relu"})

    for i, out in ((1, 32), (2, 64)):
        conv(i, out, 5, "full" if i == 1 else "group")
        if lrn:
            layers.append({"name": f"norm{i}", **_LRN})
        layers.append({"name": f"pool{i}", "op": "maxpool", **POOLS[pool]})
    for i in range(3, depth + 1):
        conv(i, 64 if i == depth else 96, 3, "full" if i == 3 else "group")
    layers.append({"name": "pool_last", "op": "maxpool", **POOLS[pool]})
    layers.append({"name": "flatten", "op": "flatten"})
    # Layers are numbered on through the fully-connected ones, as in the paper (fc6-fc8 after conv5).
    for i in (depth + 1, depth + 2):
        layers.append({"name": f"fc{i}", "op": "linear", "out": 256, "connect": "full", "bias_init": 0.1})
        layers.append({"name": f"relu{i}", "op": "relu"})
        if dropout > 0:
            layers.append({"name": f"drop{i}", "op": "dropout", "p": dropout, "scale": dropout_scale})
    # small logits: the loss starts at ln(classes)
    layers.append({"name": f"fc{depth + 3}", "op": "linear", "out": classes, "connect": "full", "std": 0.01})
    return layers
