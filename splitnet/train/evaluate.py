"""Scoring a model on the validation split: the split model during training, or the
merged single-device model from a checkpoint (``splitnet evaluate``); both count the
same way, every held-out image exactly once, so their results can be compared exactly:
the same number of images, and the loss within float32 round-off."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from splitnet.errors import SplitnetError
from splitnet.model.spec import ModelSpec


def score(forward: Callable[[torch.Tensor], torch.Tensor | None],
          loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Counts over the loader: top-1 correct, top-5 correct, samples, summed loss, then the
    same three scores of the centre crop alone.

    With several crops ([B, crops, C, S, S] batches) the softmax outputs of a sample's
    crops are averaged (paper 4.1); the centre crop comes first in every multi-crop view,
    so one pass also scores it alone: the two scorings of one network, paired exactly.
    With one crop both are the same. ``forward`` may return None on ranks that do not hold
    the logits.
    """
    counts = torch.zeros(7, dtype=torch.float64)
    with torch.no_grad():
        for x, y in loader:
            b = x.shape[0]
            crops = x.shape[1] if x.dim() == 5 else 1
            logits = forward(x.flatten(0, 1) if crops > 1 else x)
            if logits is None:
                continue
            per_crop = F.softmax(logits, dim=1).view(b, crops, -1)
            counts[2] += b
            for (i1, i5, il), probs in (((0, 1, 3), per_crop.mean(1)), ((4, 5, 6), per_crop[:, 0])):
                top = probs.topk(min(5, probs.shape[1]), dim=1).indices
                counts[i1] += float((top[:, 0] == y).sum())
                counts[i5] += float((top == y[:, None]).any(dim=1).sum())
                counts[il] += float(F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum"))
    return counts


def pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with zero rows appended up to a multiple of ``multiple`` rows; the caller drops
    their outputs (evaluation is per sample: no layer mixes the rows of a batch)."""
    missing = -x.shape[0] % multiple
    return torch.cat([x, x.new_zeros((missing, *x.shape[1:]))]) if missing else x


def summarize(counts: torch.Tensor, num_classes: int, crops: int = 1) -> dict[str, Any]:
    """Accuracies and mean loss; top-5 only where 5 is below the class count (on 5 classes
    or fewer it is 100% whatever the model does). With several crops, the centre crop's own
    scores too (``top1_centre``, ``top5_centre``, ``val_loss_centre``)."""
    n = max(float(counts[2]), 1.0)
    top5 = num_classes > 5
    out = {"top1": float(counts[0]) / n, **({"top5": float(counts[1]) / n} if top5 else {}),
           "val_loss": float(counts[3]) / n, "val_samples": int(counts[2])}
    if crops > 1:
        out.update(top1_centre=float(counts[4]) / n, **({"top5_centre": float(counts[5]) / n} if top5 else {}),
                   val_loss_centre=float(counts[6]) / n)
    return out


def scores_text(result: dict[str, Any]) -> str:
    """``top-1 96.40%, top-5 99.80%`` (no top-5 where it is not reported)."""
    top5 = f", top-5 {result['top5']:.2%}" if "top5" in result else ""
    return f"top-1 {result['top1']:.2%}{top5}"



def evaluate_checkpoint(ckpt: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's model merged onto one device (the reference), scored on cfg's data."""
    from splitnet.model.reference import build_reference
    from splitnet.model.spec import load_spec
    from splitnet.train.checkpoint import find_checkpoint, merged_state, read_meta

    path = find_checkpoint(ckpt)
    spec = load_spec(read_meta(path)["config"]["model"])
    model = build_reference(spec, seed=0)
    try:
        model.load_state_dict(merged_state(path))
    except RuntimeError as exc:
        raise SplitnetError(f"checkpoint {path} does not fit model {spec.name!r}: {exc}") from exc
    return {"checkpoint": str(path), "model": spec.name, **evaluate_reference(model, spec, cfg)}


def evaluate_reference(model: torch.nn.Module, spec: ModelSpec, cfg: dict[str, Any]) -> dict[str, Any]:
    """The whole model on one device, scored on every image of cfg's validation split."""
    from splitnet.data import build_loader

    model.eval()
    crops = cfg["eval"]["crops"]
    loader = build_loader(cfg["data"], split="val", image_size=spec.input_size, channels=spec.input_channels,
                          batch_size=cfg["eval"]["batch_size"], replica=0, num_replicas=1, epoch=0,
                          seed=cfg["seed"], crops=crops)
    return summarize(score(model, loader), spec.num_classes, crops)
