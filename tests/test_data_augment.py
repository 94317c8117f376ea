"""The paper's augmentation (section 4.1): statistics of the random parts, exact layouts."""

from __future__ import annotations

import numpy as np
import torch

from splitnet.data.augment import (
    Augmenter,
    centre_crop,
    pca_offset,
    random_crop,
    resize_shorter,
    ten_crop,
)


def coordinates(h: int, w: int) -> np.ndarray:
    """An image whose pixel (y, x) holds (y, x, 0): crops reveal where they came from."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.uint8)


def test_random_crop_bounds_and_flip_rate() -> None:
    image = coordinates(12, 10)
    rng = np.random.default_rng(0)
    tops, lefts, flips = [], [], 0
    n = 4000
    for _ in range(n):
        out = random_crop(image, 8, rng, flip=True)
        assert out.shape == (8, 8, 3)
        tops.append(int(out[0, 0, 0]))
        flipped = out[0, 0, 1] > out[0, -1, 1]
        flips += int(flipped)
        lefts.append(int(out[0, -1 if flipped else 0, 1]))
        # Rows and columns stay contiguous: a crop, not a resample.
        assert np.all(np.diff(out[:, 0, 0].astype(int)) == 1)
        assert np.all(np.abs(np.diff(out[0, :, 1].astype(int))) == 1)
    assert sorted(set(tops)) == [0, 1, 2, 3, 4]  # every offset in 0..12-8, none outside
    assert sorted(set(lefts)) == [0, 1, 2]
    # Binomial(4000, 1/2): 5 standard deviations is +-158.
    assert abs(flips - n / 2) < 158
    assert all(abs(tops.count(t) - n / 5) < 5 * (n * 0.2 * 0.8) ** 0.5 for t in range(5))


def test_no_flip_when_disabled() -> None:
    image = coordinates(8, 8)
    rng = np.random.default_rng(1)
    for _ in range(200):
        out = random_crop(image, 6, rng, flip=False)
        assert out[0, 0, 1] < out[0, -1, 1]


def test_pca_noise_has_the_covariance_of_eigvec_diag_alpha_eigval() -> None:
    # A known colour covariance: eigenvectors a rotation, eigenvalues 0.2, 0.05, 0.01.
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    eigval = np.array([0.2, 0.05, 0.01])
    rng = np.random.default_rng(3)
    shifts = np.stack([pca_offset(rng, eigval, q, std=0.1) for _ in range(20000)])
    expected = q @ np.diag((0.1 * eigval) ** 2) @ q.T
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=3e-4)
    np.testing.assert_allclose(np.cov(shifts, rowvar=False), expected, atol=2e-5, rtol=0.05)
    # Along each eigenvector the shift's std is 0.1 * its eigenvalue.
    np.testing.assert_allclose((shifts @ q).std(axis=0), 0.1 * eigval, rtol=0.03)


def test_pca_noise_is_one_shift_per_image_added_to_every_pixel() -> None:
    aug = Augmenter(4, train=True, flip=False, pca_std=0.1, eigval=(0.3, 0.1, 0.05),
                    eigvec=np.eye(3))
    image = np.random.default_rng(4).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    crop, offset = aug.sample(image, np.random.default_rng(5))
    x = aug.batch([crop], [offset])[0]
    plain = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x - plain, torch.from_numpy(offset).view(3, 1, 1).expand(3, 4, 4))
    assert np.abs(offset).max() > 0


def test_ten_crop_layout() -> None:
    image = coordinates(10, 12)
    crops = ten_crop(image, 6)
    assert crops.shape == (10, 6, 6, 3)
    # (top, left) of centre, top-left, top-right, bottom-left, bottom-right.
    corners = [(2, 3), (0, 0), (0, 6), (4, 0), (4, 6)]
    for i, (top, left) in enumerate(corners):
        np.testing.assert_array_equal(crops[i], image[top : top + 6, left : left + 6])
        np.testing.assert_array_equal(crops[i + 5], crops[i][:, ::-1])
    np.testing.assert_array_equal(centre_crop(image, 6), crops[0])


def test_eval_batches_have_a_crop_dimension_and_are_normalised() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    aug = Augmenter(6, train=False, crops=10, mean=mean, std=std)
    image = np.random.default_rng(6).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    crops, offset = aug.sample(image, None)
    x = aug.batch([crops, crops], [offset, offset])
    assert x.shape == (2, 10, 3, 6, 6) and x.dtype == torch.float32
    raw = torch.from_numpy(ten_crop(image, 6).copy()).permute(0, 3, 1, 2).float() / 255
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(x[1], expected)


def test_small_images_are_scaled_up_at_the_papers_ratio_before_cropping() -> None:
    aug = Augmenter(28, train=False)
    assert aug.fit(np.zeros((20, 30, 3), np.uint8)).shape == (32, 48, 3)  # 28 * 256/224 = 32
    assert aug.fit(np.zeros((40, 40, 3), np.uint8)).shape == (40, 40, 3)
    assert Augmenter(28, train=False, side=36).fit(np.zeros((40, 50, 3), np.uint8)).shape == (
        36, 45, 3)
    assert resize_shorter(np.zeros((10, 10, 3), np.uint8), 10).shape == (10, 10, 3)
