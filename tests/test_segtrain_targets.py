"""SOLOv2 target assignment on hand-built instances: level by scale range, centre cells, ±1 cell."""

from __future__ import annotations

import torch

from segtrain.model import SOLOv2Config
from segtrain.targets import (InstanceTargets, build_level_targets, build_targets, centre_region, mask_geometry,
                              targets_from_masks)

CFG = SOLOv2Config()
PADDED = (800, 800)  # 100 px per cell on a 8×8 grid


def _instances(boxes: list[list[float]], centers: list[list[float]], labels: list[int]) -> InstanceTargets:
    n = len(boxes)
    return InstanceTargets(torch.tensor(labels), torch.tensor(boxes, dtype=torch.float32),
                           torch.tensor(centers, dtype=torch.float32), torch.ones(n, 200, 200, dtype=torch.uint8))


def test_centre_region_small_instance_owns_its_centre_cell_only():
    # centre (550, 350) on a grid of 100-px cells; half-size 0.2·40/2 = 4 px stays inside cell (3, 5)
    assert centre_region((550, 350), (40, 40), PADDED, 8, 0.2) == (3, 3, 5, 5)


def test_centre_region_is_clipped_to_one_cell_around_the_centre():
    # sigma 1 on a 800×800 box would cover the whole grid; the region stops one cell from the centre
    assert centre_region((450, 450), (800, 800), PADDED, 8, 1.0) == (3, 5, 3, 5)
    # with the SOLOv2 sigma 0.2 the same box spans ±80 px: cells 3..5 in both directions
    assert centre_region((450, 450), (800, 800), PADDED, 8, 0.2) == (3, 5, 3, 5)
    # a centre region that crosses a cell border on one side only
    assert centre_region((450, 450), (200, 200), PADDED, 8, 0.6) == (3, 5, 3, 5)
    assert centre_region((430, 430), (100, 100), PADDED, 8, 0.2) == (4, 4, 4, 4)
    assert centre_region((405, 405), (100, 100), PADDED, 8, 0.2) == (3, 4, 3, 4)


def test_centre_region_stays_on_the_grid_at_the_border():
    assert centre_region((2, 797), (300, 300), PADDED, 8, 0.2) == (7, 7, 0, 0)
    assert centre_region((2, 797), (1000, 1000), PADDED, 8, 0.2) == (6, 7, 0, 1)


def test_instances_go_to_the_levels_whose_scale_range_holds_them():
    # sqrt(w·h): 30 → level 0 only; 60 → levels 0 and 1; 300 → levels 2 and 3; 1000 → level 4
    sizes = [30, 60, 300, 1000]
    boxes = [[0, 0, s, s] for s in sizes]
    centers = [[s / 2, s / 2] for s in sizes]
    t = _instances(boxes, centers, [0, 1, 2, 3])
    levels = build_targets(t, (1024, 1024), CFG.num_grids, CFG.scale_ranges, CFG.sigma, num_classes=4,
                           cell_conflict="sap")
    owners = [set(lv.instance[lv.instance >= 0].tolist()) for lv in levels]
    assert owners == [{0, 1}, {1}, {2}, {2}, {3}]
    for lv in levels:  # labels agree with the owning instance, background elsewhere
        fg = lv.instance >= 0
        assert torch.equal(lv.labels[fg], torch.tensor([0, 1, 2, 3])[lv.instance[fg]])
        assert (lv.labels[~fg] == 4).all()


def test_positive_cells_surround_the_centre_of_mass_not_the_box_centre():
    # an L-shaped object: its box centre is (50, 50) but its mass sits near the top-left corner
    mask = torch.zeros(1, 100, 100, dtype=torch.uint8)
    mask[0, :20, :] = 1
    mask[0, :, :20] = 1
    t = targets_from_masks(mask, torch.tensor([0]))
    assert torch.allclose(t.boxes, torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    assert t.centers[0, 0] < 40 and t.centers[0, 1] < 40
    lv = build_level_targets(t, (100, 100), 10, (1, 200), 0.2, num_classes=1)
    cells = (lv.instance == 0).nonzero().tolist()
    cx = int(t.centers[0, 0] // 10)
    cy = int(t.centers[0, 1] // 10)
    assert [cy, cx] in cells
    assert all(abs(r - cy) <= 1 and abs(c - cx) <= 1 for r, c in cells)


def test_smaller_instance_wins_a_shared_cell_under_the_sap_rule():
    t = _instances([[0, 0, 90, 90], [30, 30, 60, 60]], [[45, 45], [45, 45]], [0, 1])
    lv = build_level_targets(t, (100, 100), 10, (1, 200), 0.2, num_classes=2, cell_conflict="sap")
    assert lv.instance[4, 4] == 1 and lv.labels[4, 4] == 1
    t = _instances([[30, 30, 60, 60], [0, 0, 90, 90]], [[45, 45], [45, 45]], [0, 1])
    lv = build_level_targets(t, (100, 100), 10, (1, 200), 0.2, num_classes=2, cell_conflict="sap")
    assert lv.instance[4, 4] == 0 and lv.labels[4, 4] == 0
    cells, owners = lv.pairs()
    assert cells.tolist() == sorted(set(cells.tolist())) and owners[cells.tolist().index(44)] == 0


def test_later_annotation_wins_a_shared_cell_and_every_claimant_trains_its_mask_under_the_official_rule():
    # the small object first: AdelaiDet writes in annotation order, so the large one takes cell (4, 4)
    t = _instances([[30, 30, 60, 60], [0, 0, 90, 90]], [[45, 45], [45, 45]], [0, 1])
    lv = build_level_targets(t, (100, 100), 10, (1, 200), 0.2, num_classes=2)
    assert lv.instance[4, 4] == 1 and lv.labels[4, 4] == 1
    cells, owners = lv.pairs()
    assert cells.tolist().count(44) == 2
    assert [o for c, o in zip(cells.tolist(), owners.tolist()) if c == 44] == [0, 1]
    assert owners.tolist()[:1] == [0]  # instance by instance, in annotation order


def test_image_without_instances_is_all_background():
    t = InstanceTargets.empty(25, 25)
    levels = build_targets(t, (100, 100), CFG.num_grids, CFG.scale_ranges, CFG.sigma, num_classes=3)
    assert all((lv.labels == 3).all() and (lv.instance == -1).all() for lv in levels)
    assert [tuple(lv.labels.shape) for lv in levels] == [(s, s) for s in CFG.num_grids]


def test_targets_from_masks_geometry_and_stride4_masks():
    masks = torch.zeros(3, 10, 13, dtype=torch.uint8)
    masks[0, 2:6, 4:12] = 1
    masks[1, 0:10, 0:1] = 1  # a 1-px column: too thin to survive at stride 4 but keeps its box
    boxes, centers = mask_geometry(masks)
    assert boxes[0].tolist() == [4, 2, 12, 6]
    assert centers[0].tolist() == [8.0, 4.0]
    assert boxes[2].tolist() == [0, 0, 0, 0]
    t = targets_from_masks(masks, torch.tensor([5, 6, 7]), mask_target="sap", centre="sap")
    assert t.labels.tolist() == [5, 6]  # the empty mask is dropped
    assert t.masks.shape == (2, 3, 4)  # ceil(10/4) × ceil(13/4)
    assert t.masks[0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert t.masks[1].sum() == 0


def test_official_mask_targets_and_centres_follow_adelaidet():
    masks = torch.zeros(2, 10, 13, dtype=torch.uint8)
    masks[0, 2:6, 4:12] = 1
    masks[1, 0:10, 0:1] = 1
    t = targets_from_masks(masks, torch.tensor([5, 6]), torch.tensor([[4.0, 2, 12, 6], [0, 0, 3, 10]]))
    assert t.masks.shape == (2, 3, 3)  # int(10/4 + 0.5) × int(13/4 + 0.5)
    assert t.masks[0].tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0]]  # OpenCV bilinear, then uint8
    assert t.centers[0].tolist() == [7.5, 3.5]  # pixel i at i
    assert t.boxes[1].tolist() == [0, 0, 3, 10]  # the annotation box, not the mask's
