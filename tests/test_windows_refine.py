"""SAMRefiner in windows: each mask's window on hand-made boxes, prompts moved back to image
coordinates, and the windowed path equal to the whole-image one when the window is the image."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.core.rle import decode_rle, encode_mask
from pseudolabel.core.windows import Window, WindowRule
from refine.windowed import grown_box, object_windows, refine_windowed, shift_records


def test_each_mask_gets_a_window_that_holds_its_grown_box():
    boxes = np.array([[100, 100, 120, 120],   # small, in its grid window
                      [110, 90, 130, 112],    # beside it: the same window
                      [600, 600, 900, 700],   # larger than a window: a square of its grown size (clipped)
                      [990, 5, 1000, 15]])    # at the corner: the window is shifted inside
    windows, index = object_windows(boxes, (1000, 1000), 256, 64)
    assert index[0] == index[1]
    assert windows[index[0]] == Window(0, 0, 256, 256)
    big = windows[index[2]]
    assert (big.x1 - big.x0, big.y1 - big.y0) == (550, 550) and big.x0 == 450
    assert windows[index[3]] == Window(744, 0, 1000, 256)
    for box, i in zip(boxes, index):
        g, w = grown_box(box, (1000, 1000)), windows[i]
        assert w.x0 <= g[0] and w.y0 <= g[1] and g[2] <= w.x1 and g[3] <= w.y1
    assert grown_box(np.array([10, 10, 14, 12]), (100, 100)).tolist() == [0, 0, 30, 28]  # 16-px minimum


def test_prompt_records_move_back_by_the_window_origin():
    rec = {"pos": [[3, 4]], "neg": [], "box": [1, 2, 5, 6], "cebox": None}
    assert shift_records([rec], (100, 50)) == [{"pos": [[103, 54]], "neg": [], "box": [101, 52, 105, 56],
                                                 "cebox": None}]


@pytest.fixture(scope="module")
def pocket():
    from pseudolabel.core.engines.loading import create_engine

    return create_engine("sam_pocket", None, "cpu", "fp32")


def test_windowed_refinement_equals_the_whole_image_one_when_the_window_is_the_image(pocket):
    from pseudolabel.pocket.scenes import make_large_scene
    from refine.refiner import RefineConfig, refine_masks

    scene = make_large_scene(5, (256, 256), 3, diameters=(30, 50))
    coarse = []
    for box, m in zip(scene.boxes, scene.masks):
        full = np.zeros((256, 256), bool)
        full[box[1]:box[3], box[0]:box[2]] = m
        full[box[1]:box[1] + 3] = full[box[1]:box[3]].any(0)  # a rough edge to refine
        coarse.append(full)
    cfg = RefineConfig(engine="sam_pocket", iters=2)
    emb = pocket.encode(scene.image)
    whole = refine_masks(pocket, emb, np.stack(coarse), cfg, record=True)
    rles, scores, kept, prompts = refine_windowed(pocket, lambda win: emb, [encode_mask(m) for m in coarse],
                                                  (256, 256), WindowRule("fixed", 256, 64), cfg, record=True)
    assert all(np.array_equal(decode_rle(r).astype(bool), m) for r, m in zip(rles, whole.masks))
    assert np.allclose(scores, whole.scores, equal_nan=True) and prompts == whole.prompts


def test_refine_in_windows_on_a_large_scene_dumps_image_coordinates(tmp_path, pocket):
    import json

    from PIL import Image

    from pseudolabel.pocket.scenes import make_large_scene
    from refine.instances import run_refine
    from refine.refiner import RefineConfig

    scene = make_large_scene(7, (1024, 1024), 4, diameters=(30, 50))
    (tmp_path / "images").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "images" / "big.png")
    anns = []
    for i, (box, m) in enumerate(zip(scene.boxes, scene.masks)):
        full = np.zeros((1024, 1024), bool)
        full[box[1]:box[3], box[0]:box[2]] = m
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(full),
                     "bbox": [float(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                     "area": float(m.sum()), "iscrowd": 0})
    coco = {"images": [{"id": 1, "file_name": "big.png", "width": 1024, "height": 1024}],
            "categories": [{"id": 1, "name": "shape"}], "annotations": anns}
    (tmp_path / "in.json").write_text(json.dumps(coco))
    summary = run_refine(tmp_path / "in.json", tmp_path / "images", tmp_path / "out.json",
                          RefineConfig(engine="sam_pocket", iters=1), engine=pocket,
                          dump_prompts=tmp_path / "prompts.jsonl")
    assert summary.encoded >= 2 and not summary.failed  # windows, not the whole image
    lines = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    for line in lines:  # the positive point lies on its object, in image pixels
        box = scene.boxes[line["id"] - 1]
        x, y = line["pos"][0]
        assert box[0] <= x < box[2] and box[1] <= y < box[3]
        assert line["box"][0] >= box[0] - 1 and line["box"][2] <= box[2]
    out = json.loads((tmp_path / "out.json").read_text())
    assert all(a["segmentation"]["size"] == [1024, 1024] for a in out["annotations"])


def test_semantic_refinement_of_a_large_map_runs_in_windows(tmp_path, pocket, monkeypatch):
    from PIL import Image

    from pseudolabel.pocket.scenes import make_large_scene
    from refine.refiner import RefineConfig
    from refine.semantic import refine_semantic

    scene = make_large_scene(9, (1024, 1024), 3, diameters=(30, 50))
    labels = np.zeros((1024, 1024), np.uint8)
    for box, m in zip(scene.boxes, scene.masks):
        labels[box[1]:box[3], box[0]:box[2]][m] = 1
    for d in ("images", "maps"):
        (tmp_path / d).mkdir()
    Image.fromarray(scene.image).save(tmp_path / "images" / "big.png")
    Image.fromarray(labels, mode="L").save(tmp_path / "maps" / "big.png")
    sizes = []
    encode = pocket.encode

    def spy(image):
        sizes.append(image.shape[:2])
        return encode(image)

    monkeypatch.setattr(pocket, "encode", spy)
    summary = refine_semantic(tmp_path / "maps", tmp_path / "images", tmp_path / "out",
                              RefineConfig(engine="sam_pocket", iters=1), engine=pocket)
    assert summary.refined == 1 and summary.regions == 3
    assert sizes and all(max(hw) < 1024 for hw in sizes)  # windows around the regions, never the image
    out = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    inter, union = ((out == 1) & (labels == 1)).sum(), ((out == 1) | (labels == 1)).sum()
    assert inter / union > 0.5  # the objects keep their class in the refined map
