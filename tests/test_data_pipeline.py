"""Reading shards: distribution over replicas, identical batches per replica, bad data, resume."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from splitnet.data import BadSampleError, DataError, build_loader, data_info
from splitnet.data.pipeline import merged
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource

N_TRAIN, N_VAL = 240, 40


def identity_images(n: int) -> np.ndarray:
    """8x8 images of one colour each: R = id mod 256, G = id // 256, so any crop names its id."""
    ids = np.arange(n)
    colours = np.stack([ids % 256, ids // 256, np.full(n, 9)], axis=-1).astype(np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (n, 8, 8, 3)).copy()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    n = N_TRAIN + N_VAL
    val = np.arange(n) >= N_TRAIN
    source = ArraySource(identity_images(n), np.arange(n) % 4, val_mask=val)
    write_shard_set(source, out, per_shard=20, progress=False)
    return out


def config(root: Path, **overrides) -> dict:
    cfg = {"name": "ids", "kind": "shards", "root": str(root), "num_classes": 4, "flip": False,
           "pca_std": 0.0, "shuffle_buffer": 50}
    return cfg | overrides


def loader(root: Path, *, split="train", batch_size=20, replica=0, replicas=1, epoch=0, seed=0,
           crops=1, skip=0, part=(0, 1), **overrides):
    return build_loader(config(root, **overrides), split=split, image_size=6, channels=3,
                        batch_size=batch_size, replica=replica, num_replicas=replicas,
                        epoch=epoch, seed=seed, crops=crops, skip_batches=skip, part=part)


def ids_of(images: torch.Tensor, root: Path) -> list[int]:
    mean = torch.tensor(data_info(config(root)).mean)
    pixels = ((images[:, :, 0, 0] + mean) * 255).round().long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def batches(ld) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(ld)


def test_replicas_read_disjoint_shards_that_cover_the_split(shard_dir) -> None:
    seen = []
    for replica in range(2):
        ld = loader(shard_dir, replica=replica, replicas=2)
        assert len(ld) == N_TRAIN // (2 * 20)
        got = [i for images, labels in ld for i in ids_of(images, shard_dir)]
        labels = torch.cat([labels for _, labels in ld])
        assert labels.tolist() == [i % 4 for i in got]  # labels travel with their images
        seen.append(got)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_samples_of_a_step_do_not_depend_on_the_number_of_replicas(shard_dir, workers: int) -> None:
    # global batch k of 20: one replica's batch k, or the replicas' batches k side by side
    augmented = {"flip": True, "pca_std": 0.1}
    one = batches(loader(shard_dir, batch_size=20, epoch=1, **augmented))
    assert len(one) == N_TRAIN // 20
    for replicas in (2, 4):
        parts = [batches(loader(shard_dir, batch_size=20 // replicas, replica=r, replicas=replicas, epoch=1,
                                workers=workers, skip=3, **augmented)) for r in range(replicas)]
        for k, (x, y) in enumerate(one[3:]):
            assert torch.equal(torch.cat([p[k][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[k][1] for p in parts]), y)


def test_ranks_of_one_replica_get_identical_batches(shard_dir) -> None:
    # Two ranks of one model-parallel group call build_loader with the same arguments.
    augmented = {"flip": True, "pca_std": 0.1}
    rank0 = batches(loader(shard_dir, replica=1, replicas=2, epoch=3, **augmented))
    rank1 = batches(loader(shard_dir, replica=1, replicas=2, epoch=3, **augmented))
    assert len(rank0) == len(rank1) == 6
    for (x0, y0), (x1, y1) in zip(rank0, rank1, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other_epoch = batches(loader(shard_dir, replica=1, replicas=2, epoch=4, **augmented))
    assert not torch.equal(rank0[0][0], other_epoch[0][0])


def test_every_replica_yields_the_same_number_of_full_batches(tmp_path) -> None:
    source = ArraySource(identity_images(N_TRAIN), np.arange(N_TRAIN) % 4)
    write_shard_set(source, tmp_path, per_shard=50, progress=False)  # shards of 50,50,50,50,40
    for replicas in (2, 3):
        counts = []
        for replica in range(replicas):
            ld = loader(tmp_path, batch_size=16, replica=replica, replicas=replicas)
            sizes = [len(labels) for _, labels in ld]
            assert sizes == [16] * len(ld)
            counts.append(len(sizes))
        assert counts == [N_TRAIN // (16 * replicas)] * replicas


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_resumes_with_the_same_batches(shard_dir, workers: int) -> None:
    full = batches(loader(shard_dir, batch_size=16, workers=workers, flip=True, pca_std=0.1))
    assert len(full) == N_TRAIN // 16
    again = batches(loader(shard_dir, batch_size=16, workers=workers, flip=True, pca_std=0.1))
    resumed = loader(shard_dir, batch_size=16, workers=workers, flip=True, pca_std=0.1, skip=5)
    assert len(resumed) == len(full) - 5
    tail = batches(resumed)
    for (x, y), (xr, yr) in zip(full[5:], tail, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))


def test_batches_do_not_depend_on_the_number_of_workers(shard_dir) -> None:
    augmented = {"flip": True, "pca_std": 0.1}
    base = batches(loader(shard_dir, batch_size=16, replica=1, replicas=2, epoch=2, **augmented))
    assert len(base) == N_TRAIN // 32
    for workers, skip in [(2, 0), (3, 2)]:  # 3 workers on a resumed epoch: worker 0 starts at batch 2
        other = batches(loader(shard_dir, batch_size=16, replica=1, replicas=2, epoch=2, workers=workers,
                               skip=skip, **augmented))
        assert len(other) == len(base) - skip
        for (x, y), (xo, yo) in zip(base[skip:], other, strict=True):
            assert torch.equal(x, xo) and torch.equal(y, yo)


@pytest.mark.parametrize(("devices", "batch_size", "workers", "replicas"),
                         [(2, 20, 0, 1), (3, 32, 0, 1), (3, 32, 2, 1), (4, 12, 0, 2), (4, 3, 0, 1)])
def test_each_rank_decodes_its_rows_and_the_ranks_parts_join_into_the_whole_batch(
        shard_dir, devices, batch_size, workers, replicas) -> None:
    """Rank i of a replica's D ranks decodes rows row_parts(B, D)[i] of every batch, and only
    those; joined in rank order they are bitwise the batch one rank decodes whole."""
    augmented = {"flip": True, "pca_std": 0.1, "workers": workers}
    common = {"batch_size": batch_size, "replica": replicas - 1, "replicas": replicas, "epoch": 1, "skip": 1}
    whole_loader = loader(shard_dir, **common, **augmented)
    whole = batches(whole_loader)
    assert whole_loader.parts is None and len(whole) == N_TRAIN // (batch_size * replicas) - 1
    sizes = [batch_size // devices + (i < batch_size % devices) for i in range(devices)]
    parts = [loader(shard_dir, **common, **augmented, part=(r, devices)) for r in range(devices)]
    got = [batches(part) for part in parts]
    for rank, part in enumerate(parts):
        assert part.parts == tuple(sizes)
        shapes = [(p.dtype, len(p), len(y)) for p, _, y in got[rank]]
        assert shapes == [(torch.uint8, sizes[rank], sizes[rank])] * len(whole)
    assert [part.stats["decoded"] for part in parts] == [n * len(whole) for n in sizes]  # 1/D of every batch
    for k, (x, y) in enumerate(whole):  # joined as the ranks' gather joins them, then finished
        pixels, offsets, labels = (torch.cat([g[k][i] for g in got]) for i in range(3))
        assert torch.equal(parts[0].finish(pixels, offsets), x) and torch.equal(labels, y)
    assert whole_loader.stats["decoded"] == batch_size * len(whole)


def test_ranks_fill_bad_rows_as_one_rank_does_and_each_bad_sample_is_counted_once(damaged) -> None:
    root, shard, _ = damaged
    whole_loader = loader(root, batch_size=19, shuffle_buffer=0, pca_std=0.1)
    whole = batches(whole_loader)
    parts = [loader(root, batch_size=19, shuffle_buffer=0, pca_std=0.1, part=(r, 3)) for r in range(3)]
    got = [batches(p) for p in parts]
    for k, (x, y) in enumerate(whole):
        pixels, offsets, labels = (torch.cat([g[k][i] for g in got]) for i in range(3))
        assert torch.equal(parts[0].finish(pixels, offsets), x) and torch.equal(labels, y)
    assert whole_loader.stats["skipped"] == sum(p.stats["skipped"] for p in parts) == 2
    joined = merged(p.damage for p in parts)
    assert {k: (d.cut, d.undecodable) for k, d in joined.items()} == {str(shard.resolve()): (0, 2)}


def test_a_part_is_for_training_batches(shard_dir) -> None:
    with pytest.raises(DataError, match=r"part=\(0, 2\): .* D > 1 only for the train split"):
        loader(shard_dir, split="val", part=(0, 2))
    with pytest.raises(DataError, match=r"part=\(2, 2\): \(rank i, of D ranks\) with 0 <= i < D"):
        loader(shard_dir, part=(2, 2))


def test_val_scores_every_sample_once_in_partial_batches(shard_dir) -> None:
    for replicas in (1, 2, 3):
        seen = []
        for replica in range(replicas):
            ld = loader(shard_dir, split="val", batch_size=7, replica=replica, replicas=replicas, workers=2)
            sizes = [len(y) for _, y in ld]
            assert len(sizes) == len(ld)
            assert sizes[:-1] == [7] * (len(sizes) - 1) and all(0 < n <= 7 for n in sizes[-1:])  # last partial
            assert len(sizes) == {1: [6], 2: [3, 3], 3: [3, 3, 0]}[replicas][replica]  # val: 2 shards of 20
            seen += [i for x, _ in ld for i in ids_of(x, shard_dir)]
        assert sorted(seen) == list(range(N_TRAIN, N_TRAIN + N_VAL))
    ten = batches(loader(shard_dir, split="val", batch_size=15, crops=10, flip=True))
    assert [x.shape[:2] for x, _ in ten] == [(15, 10), (15, 10), (10, 10)]


def test_val_centre_crop_and_ten_crops(shard_dir) -> None:
    one = batches(loader(shard_dir, split="val", batch_size=10))
    ten = batches(loader(shard_dir, split="val", batch_size=10, crops=10, flip=True))
    assert len(one) == len(ten) == N_VAL // 10
    assert ten[0][0].shape == (10, 10, 3, 6, 6)
    for (x1, y1), (x10, y10) in zip(one, ten, strict=True):
        assert torch.equal(x10[:, 0], x1) and torch.equal(y1, y10)
        assert torch.equal(x10[:, 5:], x10[:, :5].flip(-1))  # the last five: the first five mirrored
    # Val is read in order, without shuffling: the same every epoch.
    ids = [i for x, _ in one for i in ids_of(x, shard_dir)]
    assert sorted(ids) == list(range(N_TRAIN, N_TRAIN + N_VAL))
    assert ids == [i for x, _ in loader(shard_dir, split="val", batch_size=10, epoch=7)
                   for i in ids_of(x, shard_dir)]


def rewrite_member(shard: Path, name: str, payload: bytes) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = payload if member.name == name else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def damaged(tmp_path) -> tuple[Path, Path, list[str]]:
    """40 samples in 4 shards; in shard 1 one image is garbage and one class is not a number."""
    source = ArraySource(identity_images(40), np.arange(40) % 4)
    write_shard_set(source, tmp_path, per_shard=10, progress=False)
    shard = tmp_path / "train-000001.tar"
    with tarfile.open(shard) as tar:
        keys = sorted({Path(m.name).stem for m in tar.getmembers()})[:2]
    rewrite_member(shard, f"{keys[0]}.png", b"\x89PNG garbage")
    rewrite_member(shard, f"{keys[1]}.cls", b"seven")
    return tmp_path, shard, keys


def test_bad_samples_are_skipped_and_counted(damaged, caplog) -> None:
    root, shard, keys = damaged
    ld = loader(root, batch_size=19, shuffle_buffer=0)
    got = [ids_of(x, root) for x, _ in ld]
    assert ld.stats["skipped"] == 2
    assert [len(ids) for ids in got] == [19, 19]  # bad samples' places are filled within their batch
    ids = [i for batch in got for i in batch]
    # positions 0..37 of the epoch hold 36 good samples; each bad one's place repeats one of them
    assert len(set(ids)) == 36 and not set(ids) & {int(k) for k in keys}
    assert any(keys[0] in r.getMessage() and shard.name in r.getMessage() for r in caplog.records)
    assert {k: (d.cut, d.undecodable) for k, d in ld.damage.items()} == {str(shard.resolve()): (0, 2)}


def test_resume_is_exact_when_bad_samples_fall_in_the_skipped_part(damaged) -> None:
    root, _, _ = damaged
    # Unshuffled, epoch 0 reads shards 2, 0, 1, 3: the damaged shard 1 is positions 20..29,
    # inside the 6 batches of 5 that the resumed epoch skips.
    whole = loader(root, batch_size=5, shuffle_buffer=0, pca_std=0.1, workers=2)
    full = batches(whole)
    resumed = loader(root, batch_size=5, shuffle_buffer=0, pca_std=0.1, skip=6)
    tail = batches(resumed)
    assert whole.stats["skipped"] == 2 and resumed.stats["skipped"] == 0
    assert len(full) == 8 and len(tail) == 2
    for (x, y), (xr, yr) in zip(full[6:], tail, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_raise_with_their_location(damaged, workers: int) -> None:
    root, shard, keys = damaged
    with pytest.raises(BadSampleError, match=rf"train-000001\.tar: sample '({keys[0]}|{keys[1]})'"):
        batches(loader(root, batch_size=19, shuffle_buffer=0, on_error="raise", workers=workers))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_shard_is_skipped_and_named_with_the_samples_it_lost(tmp_path, workers) -> None:
    source = ArraySource(identity_images(40), np.arange(40) % 4)
    write_shard_set(source, tmp_path, per_shard=10, progress=False)
    shard = tmp_path / "train-000002.tar"
    with tarfile.open(shard) as tar:
        held = {int(Path(m.name).stem) for m in tar.getmembers()}  # a sample's key is its id
    shard.write_bytes(shard.read_bytes()[:3000])
    ld = loader(tmp_path, batch_size=10, workers=workers)
    got = [ids_of(x, tmp_path) for x, _ in ld]
    assert [len(ids) for ids in got] == [10] * 4  # the stream wraps around to fill the epoch
    assert ld.stats["skipped"] >= 1
    kept = {i for ids in got for i in ids} & held
    assert set(ld.damage) == {str(shard.resolve())}
    lost = ld.damage[str(shard.resolve())]
    assert 0 < lost.samples == 10 - len(kept) and "unreadable tar data" in lost.reason
    with pytest.raises(BadSampleError, match="train-000002.tar: the rest of the shard: unread"):
        batches(loader(tmp_path, batch_size=10, on_error="raise"))


def test_shard_set_errors_name_the_cause(shard_dir, tmp_path) -> None:
    with pytest.raises(DataError, match=r"no shards match '.*nowhere/train-\*\.tar' \(data\.train"):
        loader(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no shards match '.*/val-\*\.tar' \(data.val\)"):
        source = ArraySource(identity_images(20), np.arange(20) % 4)
        write_shard_set(source, tmp_path / "train_only", per_shard=10, progress=False)
        loader(tmp_path / "train_only", split="val")
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(DataError, match="meta.json not found"):
        loader(tmp_path / "stray")
    # fewer shards than replicas: each replica reads the whole set and takes its part of a step
    parts = [batches(loader(tmp_path / "train_only", batch_size=5, replica=r, replicas=3)) for r in range(3)]
    whole = batches(loader(tmp_path / "train_only", batch_size=15))
    assert torch.equal(torch.cat([p[0][0] for p in parts]), whole[0][0])
    with pytest.raises(DataError, match="data.num_classes=10 but .* lists 4 classes"):
        loader(shard_dir, num_classes=10)


@pytest.mark.parametrize(("requested", "flip", "augment", "scored"), [
    (10, True, True, 10),    # training flips: the paper's ten crops
    (10, False, True, 5),    # training never flips: no mirrored crops
    (10, True, False, 5),    # no augmentation at all: no flips either
    (5, True, True, 5),
    (1, False, True, 1),
])
def test_test_crops_follow_the_training_augmentation(shard_dir, requested, flip, augment, scored) -> None:
    x, y = next(iter(loader(shard_dir, split="val", batch_size=10, crops=requested, flip=flip, augment=augment)))
    ten, _ = next(iter(loader(shard_dir, split="val", batch_size=10, crops=10, flip=True)))
    assert x.shape[:2] == ((10, scored) if scored > 1 else (10, 3))
    assert torch.equal(x if scored > 1 else x[:, None], ten[:, :scored])  # centre, corners, then mirrors


def test_argument_errors(shard_dir) -> None:
    with pytest.raises(DataError, match="crops=10"):
        loader(shard_dir, crops=10)
    with pytest.raises(DataError, match="skip_batches=13 is outside 0..12"):
        loader(shard_dir, skip=13)
    with pytest.raises(DataError, match="unknown data config keys \\['flips'\\]"):
        loader(shard_dir, flips=True)
    with pytest.raises(DataError, match="RGB images; the model takes 1 channels"):
        build_loader(config(shard_dir), split="train", image_size=6, channels=1, batch_size=4,
                     replica=0, num_replicas=1, epoch=0, seed=0)
    with pytest.raises(DataError, match="cannot fill one batch of 200 on each of 2"):
        loader(shard_dir, batch_size=200, replicas=2)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The shards a WebDataset is opened on, in order, with the raw-sample cache emptied first."""
    from splitnet.data import pipeline

    pipeline.RAW_CACHE.clear()
    calls: list[str] = []
    real = pipeline.wds.WebDataset

    def counting(urls, *args, **kwargs):
        calls.extend(urls)
        return real(urls, *args, **kwargs)

    monkeypatch.setattr(pipeline.wds, "WebDataset", counting)
    yield calls
    pipeline.RAW_CACHE.clear()


def test_later_epochs_read_kept_samples_and_get_the_batches_a_fresh_read_gives(shard_dir, opened) -> None:
    from splitnet.data import pipeline

    batches(loader(shard_dir, fraction=0.5, epoch=0))
    assert len(opened) == N_TRAIN // 20  # every training shard scanned once
    opened.clear()
    warm = batches(loader(shard_dir, fraction=0.5, epoch=1, pca_std=0.1))
    assert opened == []  # the second epoch scanned no tar
    pipeline.RAW_CACHE.clear()
    cold = batches(loader(shard_dir, fraction=0.5, epoch=1, pca_std=0.1))
    assert len(opened) == N_TRAIN // 20 and len(warm) == len(cold) == 6
    for (x, y), (xc, yc) in zip(warm, cold, strict=True):
        assert torch.equal(x, xc) and torch.equal(y, yc)
    opened.clear()
    batches(loader(shard_dir, fraction=0.25, epoch=1))  # another subset is another entry
    assert len(opened) == N_TRAIN // 20


def test_a_rewritten_shard_is_read_again_and_a_broken_one_is_never_kept(tmp_path, opened) -> None:
    source = ArraySource(identity_images(40), np.arange(40) % 4)
    write_shard_set(source, tmp_path, per_shard=10, progress=False)
    shard = tmp_path / "train-000001.tar"
    before = {i for x, _ in loader(tmp_path, batch_size=10, shuffle_buffer=0) for i in ids_of(x, tmp_path)}
    assert before == set(range(40))
    with tarfile.open(shard) as tar:
        key = sorted({Path(m.name).stem for m in tar.getmembers()})[0]
    rewrite_member(shard, f"{key}.cls", b"seven")  # same tar blocks, same size: the modification time tells
    opened.clear()
    ld = loader(tmp_path, batch_size=10, shuffle_buffer=0)
    batches(ld)
    assert opened == [str(shard.resolve())] and ld.stats["skipped"] == 1  # only the rewritten shard
    shard.write_bytes(shard.read_bytes()[:3000])
    for _ in range(2):
        opened.clear()
        ld = loader(tmp_path, batch_size=10, shuffle_buffer=0)
        batches(ld)
        assert opened == [str(shard.resolve())] and ld.damage[str(shard.resolve())].cut > 0


def test_keep_mb_bounds_what_is_kept_and_zero_keeps_nothing(shard_dir, opened) -> None:
    from splitnet.data import pipeline

    kept = [batches(loader(shard_dir, fraction=0.5, epoch=e)) for e in (0, 1)]
    assert 0 < pipeline.RAW_CACHE.held < 1 << 20 and len(opened) == N_TRAIN // 20
    opened.clear()
    none = [batches(loader(shard_dir, fraction=0.5, epoch=e, keep_mb=0)) for e in (0, 1)]
    # every epoch scans every shard (and some twice: a subset of 120 +- binomial spread wraps around)
    assert len(opened) >= 2 * N_TRAIN // 20 and pipeline.RAW_CACHE.held == 0
    for (x, y), (xn, yn) in zip([b for e in kept for b in e], [b for e in none for b in e], strict=True):
        assert torch.equal(x, xn) and torch.equal(y, yn)
    with pytest.raises(DataError, match="data.keep_mb must be an integer >= 0"):
        loader(shard_dir, keep_mb=-1)
