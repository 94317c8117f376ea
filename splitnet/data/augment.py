"""The paper's augmentation (Krizhevsky et al. 2012, section 4.1) with numpy and PIL.

Training: a random ``size`` x ``size`` crop (224 of 256 in the paper; the model's input
size here), an optional horizontal flip, and PCA colour noise: every image gets
``eigvec @ (alpha * eigval)`` added to each pixel, alpha ~ N(0, pca_std) drawn once per
image. Evaluation: the centre crop, or ten crops (the four corners and the centre, then
the same five mirrored) whose softmax outputs the caller averages; five (no mirrors)
where training never flips (``eval_crops``): a net that never saw a mirrored image is
not scored on one. Then mean subtraction (the paper's only normalisation), optionally
division by the std.

Pixels are in [0, 1] units throughout, the units of meta.json's colour statistics.
Cropping and flipping happen on uint8 arrays, the float work on whole batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# The paper's 256 -> 224: images smaller than the crop are first scaled to this ratio.
CROP_RATIO = 256 / 224
TEN_CROP_ORDER = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")


def resize_shorter(image: np.ndarray, side: int) -> np.ndarray:
    """Scale so the shorter side is ``side`` (bicubic), keeping the aspect ratio."""
    h, w = image.shape[:2]
    if min(h, w) == side:
        return image
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return image[top : top + size, left : left + size]


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    return crop(image, (h - size) // 2, (w - size) // 2, size)


def five_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(5, size, size, C): the centre and the four corners, in TEN_CROP_ORDER."""
    h, w = image.shape[:2]
    return np.stack([
        centre_crop(image, size),
        crop(image, 0, 0, size),
        crop(image, 0, w - size, size),
        crop(image, h - size, 0, size),
        crop(image, h - size, w - size, size),
    ])


def ten_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(10, size, size, C): TEN_CROP_ORDER, then the same five crops mirrored left-right."""
    five = five_crop(image, size)
    return np.concatenate([five, five[:, :, ::-1]])


def eval_crops(requested: int, train_flips: bool) -> int:
    """The crops an evaluation scores: ``requested`` (1, 5 or 10), except that ten (the
    paper's, with mirrors) becomes five where training never flips its images."""
    return 5 if requested == 10 and not train_flips else requested


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """A uniformly placed size x size crop, mirrored with probability 1/2 when ``flip``."""
    h, w = image.shape[:2]
    out = crop(image, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def pca_offset(rng: np.random.Generator, eigval: np.ndarray, eigvec: np.ndarray,
               std: float) -> np.ndarray:
    """The per-image RGB shift ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std^2) (section 4.1)."""
    alpha = rng.normal(0.0, std, size=3)
    return (eigvec @ (alpha * eigval)).astype(np.float32)


class Augmenter:
    """Turns decoded HxWx3 uint8 images into model inputs for one split."""

    def __init__(self, image_size: int, *, train: bool, crops: int = 1, flip: bool = True,
                 pca_std: float = 0.1, side: int | None = None,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] | None = None,
                 eigval: Sequence[float] = (0.0, 0.0, 0.0),
                 eigvec: Sequence[Sequence[float]] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))) -> None:
        self.size = image_size
        self.train = train
        self.crops = crops
        self.flip = flip
        self.pca_std = pca_std
        self.side = side
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.eigval = np.asarray(eigval, dtype=np.float64)
        self.eigvec = np.asarray(eigvec, dtype=np.float64)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """Rescale to ``side`` if set, else up to the paper's ratio if smaller than the crop."""
        if self.side is not None:
            return resize_shorter(image, self.side)
        if min(image.shape[:2]) < self.size:
            return resize_shorter(image, round(self.size * CROP_RATIO))
        return image

    def sample(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (uint8 crop(s), float32 RGB offset). ``rng`` is this sample's own."""
        image = self.fit(image)
        if self.train:
            offset = (pca_offset(rng, self.eigval, self.eigvec, self.pca_std)
                      if self.pca_std > 0 else np.zeros(3, dtype=np.float32))
            return random_crop(image, self.size, rng, self.flip), offset
        views = {1: centre_crop, 5: five_crop, 10: ten_crop}
        view = views[self.crops](image, self.size)
        return view, np.zeros(3, dtype=np.float32)

    def batch(self, crops: Sequence[np.ndarray], offsets: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack to float32 [B, C, S, S] (or [B, crops, C, S, S]), add colour noise, normalise."""
        return self.finish(*self.pixels(crops, offsets))

    @staticmethod
    def pixels(crops: Sequence[np.ndarray], offsets: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops as uint8 [B, (crops,) C, S, S] and their float32 RGB offsets [B, 3]: a batch
        before ``finish``, a quarter of its bytes (what the ranks of a replica all-gather)."""
        # Channels move first while still uint8
        return torch.from_numpy(np.stack(crops)).movedim(-1, -3).contiguous(), torch.from_numpy(np.stack(offsets))

    def finish(self, pixels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """uint8 pixels and their offsets -> float32 inputs, on the pixels' device, in one scale
        and one shift: (x/255 + noise - mean) / std."""
        x = pixels.float()
        shift = offsets.view(-1, *[1] * (x.dim() - 4), 3, 1, 1)
        mean = self.mean.to(x.device)
        std = self.std.to(x.device) if self.std is not None else torch.ones(3, 1, 1, device=x.device)
        return x.mul_(1.0 / (255.0 * std)).add_((shift - mean) / std)
