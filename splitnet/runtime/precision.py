"""``train.precision``: where a step computes in bf16.

Forward (the layers and the loss) runs under autocast in the plan's compute dtype, so the
activations, and with them every exchange, are bf16 and the plan's bytes halve; the
parameters stay float32 master weights, their gradients float32 (autocast casts the
weights for each op, and backward accumulates into the float32 leaves), and so does the
optimizer's state. Backward runs outside autocast, as torch recommends: it follows the
dtypes forward chose.
"""

from __future__ import annotations

import torch

from splitnet.comm.transport import Transport


def compute(transport: Transport | None) -> torch.autocast:
    """The forward context of this rank: autocast to bf16, or nothing for float32 (and for a
    one-device pipeline, which runs without a transport)."""
    if transport is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(transport.device.type, dtype=transport.dtype, enabled=transport.dtype != torch.float32)
