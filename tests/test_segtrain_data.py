"""Training data: COCO RLE → targets, skipped annotations, bad input, deterministic resumable sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import encode_mask
from segtrain.data import CategoryMap, TrainDataset, check_same_categories, load_dataset, parse_min_sizes, resized_hw
from segtrain.sampling import ResumableBatchSampler, orientation, pass_slices


def _write(tmp_path, coco: dict, name: str = "train.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def test_load_dataset_skips_and_counts_empty_masks_and_crowds(small_gt, coco_dir, tmp_path):
    coco = json.loads(small_gt.read_text())
    im = coco["images"][0]
    first = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    first[0]["segmentation"] = encode_mask(np.zeros((im["height"], im["width"]), np.uint8))
    first[1]["iscrowd"] = 1
    records, cats, stats = load_dataset(_write(tmp_path, coco), coco_dir / "images")
    assert stats.empty_masks == 1 and stats.crowd == 1
    assert stats.instances == len(coco["annotations"]) - 2
    assert len(cats.ids) == 80 and cats.ids == sorted(cats.ids)
    assert "1 empty masks skipped" in stats.summary()


def test_missing_images_are_one_sentence_or_skipped_and_counted(small_gt, coco_dir, tmp_path):
    coco = json.loads(small_gt.read_text())
    coco["images"][1]["file_name"] = "not_there.jpg"
    path = _write(tmp_path, coco)
    with pytest.raises(InputError, match=r"1 of 3 images .* missing .*not_there\.jpg"):
        load_dataset(path, coco_dir / "images")
    records, _, stats = load_dataset(path, coco_dir / "images", missing="skip")
    assert stats.images_missing == 1 and len(records) == 2


def test_category_mismatch_between_train_and_val_is_an_input_error():
    train = CategoryMap([1, 2, 3], ["a", "b", "c"])
    with pytest.raises(InputError, match=r"train\.json has categories absent from val\.json: 3 \(c\)"):
        check_same_categories(train, CategoryMap([1, 2], ["a", "b"]), "train.json", "val.json")
    with pytest.raises(InputError, match=r"val\.json has categories absent from train\.json: 4 \(d\)"):
        check_same_categories(train, CategoryMap([1, 2, 3, 4], ["a", "b", "c", "d"]), "train.json", "val.json")
    with pytest.raises(InputError, match="named 'b' in train.json but 'bee'"):
        check_same_categories(train, CategoryMap([1, 2, 3], ["a", "bee", "c"]), "train.json", "val.json")
    check_same_categories(train, CategoryMap([3, 1, 2], ["c", "a", "b"]), "train.json", "val.json")


def test_min_size_parsing_and_resize():
    assert parse_min_sizes("640-800") == (640, 672, 704, 736, 768, 800)
    assert parse_min_sizes("320") == (320,)
    assert parse_min_sizes("480,512") == (480, 512)
    with pytest.raises(InputError, match="--min-size"):
        parse_min_sizes("big")
    assert resized_hw(480, 640, 800, 1333) == (800, 1067)
    assert resized_hw(100, 1000, 800, 1333) == (133, 1333)  # long side capped


def test_train_samples_are_a_function_of_index_and_seed_and_flip_mirrors(small_gt, coco_dir):
    records, cats, _ = load_dataset(small_gt, coco_dir / "images")
    plain = TrainDataset(records, (96,), 200, flip_prob=0.0)
    flipped = TrainDataset(records, (96,), 200, flip_prob=1.0)
    a, b = plain[(0, 7)], plain[(0, 7)]
    assert torch.equal(a.image, b.image) and torch.equal(a.targets.masks, b.targets.masks)
    f = flipped[(0, 7)]
    h, w = a.image.shape[-2:]
    assert min(h, w) == 96 and a.original_hw == (records[0].height, records[0].width)
    assert torch.equal(f.image, a.image.flip(-1))
    n = len(a.targets)
    assert n == len(records[0].rles) and a.targets.masks.shape == (n, -(-h // 4), -(-w // 4))
    mirrored = torch.stack([w - a.targets.boxes[:, 2], a.targets.boxes[:, 1], w - a.targets.boxes[:, 0],
                            a.targets.boxes[:, 3]], dim=1)
    assert torch.allclose(f.targets.boxes, mirrored)
    assert torch.allclose(f.targets.centers[:, 0], w - a.targets.centers[:, 0], atol=1e-3)
    # the stride-4 masks agree with the boxes (to a cell)
    ys, xs = torch.nonzero(a.targets.masks[0], as_tuple=True)
    assert abs(xs.min().item() * 4 - a.targets.boxes[0, 0].item()) <= 4


def test_alternatives_are_loaded_by_rank(small_gt, coco_dir, tmp_path):
    coco = json.loads(small_gt.read_text())
    anns = coco["annotations"]
    im0 = coco["images"][0]["id"]
    first = [a for a in anns if a["image_id"] == im0]
    others = [a["segmentation"] for a in first[1:]]
    first[0]["alternatives"] = others  # ranks 2, 3, ... (3 alternatives at most here)
    records, _, stats = load_dataset(_write(tmp_path, coco), coco_dir / "images")
    assert stats.with_alternatives == 1
    ds = TrainDataset(records, (96,), 200, flip_prob=0.0, alt_ranks=(2, 4, 6))
    s = ds[(0, 0)]
    assert s.targets.alt_masks.shape[:2] == (len(first), 3)
    valid = s.targets.alt_valid
    assert valid[0].tolist() == [True, len(others) >= 3, False]  # rank 6 = alternatives[4] absent
    assert not valid[1:].any()
    # rank 2 is the second annotation's mask, which is that instance's own target
    assert torch.equal(s.targets.alt_masks[0, 0], s.targets.masks[1])


def test_resumable_sampler_restarts_mid_stream_and_shards_ranks():
    full = ResumableBatchSampler(5, 2, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(6)]  # crosses two epoch boundaries
    tail = iter(ResumableBatchSampler(5, 2, seed=3, start_iter=4))
    assert [next(tail) for _ in range(2)] == stream[4:]
    first_epoch = [i for b in stream[:2] for i, _ in b] + [stream[2][0][0]]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]  # an epoch is a permutation
    r0 = next(iter(ResumableBatchSampler(6, 3, seed=1, rank=0, world_size=2)))
    r1 = next(iter(ResumableBatchSampler(6, 3, seed=1, rank=1, world_size=2)))
    assert sorted(i for i, _ in r0 + r1) == list(range(6))
    assert len({s for _, s in r0 + r1}) == 6  # every item gets its own augmentation seed


def test_passes_are_grouped_by_orientation_and_resume_mid_stream():
    groups = [0, 1, 0, 0, 1, 0, 1]  # landscape / portrait, as detectron2 groups them
    full = ResumableBatchSampler(7, 4, seed=5, per_pass=2, groups=groups)
    it = iter(full)
    stream = [next(it) for _ in range(8)]
    for batch in stream:
        assert len(batch) == 4
        for part in pass_slices(4, 2):
            assert len({groups[i] for i, _ in batch[part]}) == 1, batch  # one orientation per pass
    tail = iter(ResumableBatchSampler(7, 4, seed=5, per_pass=2, groups=groups, start_iter=5))
    assert [next(tail) for _ in range(3)] == stream[5:]
    # every image keeps coming: grouping delays items, it drops none
    seen = [i for b in stream for i, _ in b]
    assert set(seen) == set(range(7)) and len({s for b in stream for _, s in b}) == len(seen)
    # without groups, a pass is the next items of the stream (the whole batch by default)
    plain = next(iter(ResumableBatchSampler(7, 4, seed=5)))
    assert next(iter(ResumableBatchSampler(7, 4, seed=5, per_pass=2))) == plain
    assert orientation(640, 480) == 0 and orientation(480, 640) == 1 and orientation(500, 500) == 1
    assert pass_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(ValueError, match="does not split"):
        ResumableBatchSampler(7, 3, per_pass=2)


def test_a_batch_larger_than_the_training_set_is_warned_about():
    from segtrain.data import batch_warning

    assert batch_warning(4, 4) is None and batch_warning(2, 100) is None
    text = batch_warning(100000, 4)
    assert "--batch 100000 is larger than the 4 training images" in text and "25000 times" in text
