"""data=synthetic: deterministic random tensors, labelled as such."""

from __future__ import annotations

import torch

from splitnet.data import build_loader, data_info

CFG = {"name": "synthetic", "kind": "synthetic", "num_classes": 7, "train_batches": 5,
       "val_batches": 2}


def loader(**kw):
    args = {"split": "train", "image_size": 9, "channels": 3, "batch_size": 4, "replica": 0,
            "num_replicas": 2, "epoch": 0, "seed": 0} | kw
    return build_loader(CFG, **args)


def test_shapes_labels_and_length() -> None:
    ld = loader()
    assert ld.synthetic and len(ld) == 5
    batches = list(ld)
    assert len(batches) == 5
    images, labels = batches[0]
    assert images.shape == (4, 3, 9, 9) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 7
    ten, _ = next(iter(loader(split="val", crops=10)))
    assert ten.shape == (4, 10, 3, 9, 9) and len(loader(split="val", num_replicas=1)) == 2


def test_batches_depend_on_seed_epoch_replica_and_index_only() -> None:
    a = list(loader())
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, loader(), strict=True))
    for other in (loader(seed=1), loader(epoch=1), loader(replica=1)):
        assert not torch.equal(a[0][0], next(iter(other))[0])
    tail = list(loader(skip_batches=3))
    assert len(tail) == 2 and torch.equal(tail[0][0], a[3][0])


def test_info_says_synthetic() -> None:
    info = data_info(CFG)
    assert info.synthetic and info.num_classes == 7
    assert info.batches_per_epoch("train", 4, 8) == 5


def test_a_step_holds_the_same_samples_on_any_number_of_replicas() -> None:
    one = list(loader(batch_size=8, num_replicas=1))
    halves = [list(loader(replica=r)) for r in range(2)]
    for k, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), x)
        assert torch.equal(torch.cat([halves[0][k][1], halves[1][k][1]]), y)


def test_the_validation_split_is_the_same_images_on_any_number_of_replicas() -> None:
    one = list(loader(split="val", num_replicas=1, batch_size=3))
    dealt = [list(loader(split="val", replica=r, num_replicas=3, batch_size=3)) for r in range(3)]
    assert [len(d) for d in dealt] == [1, 1, 0]  # 2 batches among 3 replicas: the third scores none
    assert torch.equal(dealt[0][0][0], one[0][0]) and torch.equal(dealt[1][0][0], one[1][0])
    assert torch.equal(dealt[1][0][1], one[1][1])
    assert not torch.equal(one[0][0], one[1][0])
