"""Golden vectors of the official SAPNet selection code and AdelaiDet's matrix NMS.

Not run by the test suite. It executes the official functions themselves, read from checkouts
given on the command line, in a throwaway environment that has torch and numpy but neither
mmcv nor mmdetection: the few functions the SAPNet code calls from those libraries are read
from the same checkout (mmdetection's pure-Python helpers) and the network is replaced by a
deterministic box → logits function, so that every number depends only on the MIL code.

    python scripts/make_golden_sapnet.py --sapnet /path/to/SAPNet --adelaidet /path/to/AdelaiDet \
        --out tests/data/golden/

``--sapnet`` is a checkout of zhaoyangwei123/SAPNet (ed0d086), ``--adelaidet`` one of
aim-uofa/AdelaiDet. Writes ``sapnet_select.json`` and ``solov2_matrix_nms.json``.

``--check-export FILE`` instead runs the official loader ``CocoFmtDataset._parse_ann_info`` on
every image of a ``sap proposals export --format sapnet`` file and prints what it read.

Nothing of the official code is copied: it is parsed from the checkout and executed.
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import math
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MMDET = "TOV_mmdetection/mmdet"


# ---------------------------------------------------------------------------------------------
# reading official definitions
# ---------------------------------------------------------------------------------------------

def _strip_decorators(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        node.decorator_list = []
    return node


def defs_from(path: Path, names: list[str], namespace: dict) -> dict:
    """Execute the top-level functions/classes ``names`` of ``path`` in ``namespace``.

    ``Class.method`` names execute one method as a plain function named ``method``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wanted = []
    for name in names:
        if "." in name:
            cls, meth = name.split(".")
            node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
            fn = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == meth)
        else:
            fn = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
        wanted.append(_strip_decorators(fn))
    module = ast.Module(body=wanted, type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)
    return namespace


def load_official(root: Path) -> dict:
    """The official SAPNet training functions, executable on CPU without mmcv."""
    m = root / MMDET
    ns: dict = {"torch": torch, "nn": nn, "F": F, "np": np, "math": math, "copy": __import__("copy"),
                "partial": __import__("functools").partial, "map": map, "zip": zip}
    defs_from(m / "core/bbox/transforms.py", ["bbox2roi", "bbox_xyxy_to_cxcywh"], ns)
    defs_from(m / "core/utils/misc.py", ["multi_apply"], ns)
    defs_from(m / "core/bbox/iou_calculators/iou2d_calculator.py", ["fp16_clamp", "bbox_overlaps"], ns)
    defs_from(m / "models/losses/utils.py", ["reduce_loss", "weight_reduce_loss"], ns)
    defs_from(m / "models/losses/accuracy.py", ["accuracy"], ns)
    defs_from(m / "models/losses/cross_entropy_loss.py", ["_expand_onehot_labels"], ns)
    defs_from(m / "models/losses/multi_instance_learning_loss.py", ["MILLoss"], ns)
    # loss_mil imports weight_reduce_loss from mmdet.models.losses.utils inside the function
    import sys
    for name in ("mmdet", "mmdet.models", "mmdet.models.losses"):
        sys.modules.setdefault(name, types.ModuleType(name))
    utils = types.ModuleType("mmdet.models.losses.utils")
    utils.weight_reduce_loss = ns["weight_reduce_loss"]
    sys.modules["mmdet.models.losses.utils"] = utils
    head_ns = dict(ns)
    defs_from(m / "models/roi_heads/bbox_heads/MIL_bbox_head.py", ["Shared2FCInstanceMILHead.loss_mil"], head_ns)
    ns["loss_mil"] = head_ns["loss_mil"]
    sap_ns = dict(ns)
    defs_from(m / "models/roi_heads/SAP_head.py",
              ["SAPHead.forward_train", "SAPHead._bbox_forward_train", "SAPHead._bbox_forward",
               "SAPHead.merge_box", "SAPHead.merge_box_single"], sap_ns)
    ns["sap_head"] = {k: sap_ns[k] for k in ("forward_train", "_bbox_forward_train", "_bbox_forward",
                                              "merge_box", "merge_box_single")}
    det_ns = dict(ns)
    defs_from(m / "models/detectors/SAPNet.py", ["gen_negative_proposals", "SAPNet.forward_train"], det_ns)
    ns["det_ns"] = det_ns
    return ns


# ---------------------------------------------------------------------------------------------
# the deterministic network: box → (cls, ins) logits
# ---------------------------------------------------------------------------------------------

def head_logits(boxes: torch.Tensor, w: dict, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class and instance logits of ``N×4`` XYXY float32 boxes (the test repeats this exactly).

    features ``f = [x1, y1, x2, y2, area / 100] / 100``;
    ``cls = offset + scale · tanh(f @ Wc + bc)``, ``ins = scale_ins · tanh(f @ Wi + bi)``.
    """
    b = boxes.float() / 100.0
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    f = torch.cat([b, area[:, None]], dim=1)
    t = lambda key: torch.tensor(w[key][stage], dtype=torch.float32)  # noqa: E731
    cls = w["offset"] + w["scale"] * torch.tanh(f @ t("Wc") + t("bc"))
    ins = w["scale_ins"] * torch.tanh(f @ t("Wi") + t("bi"))
    return cls, ins


class _Extractor:
    num_inputs = 5

    def __call__(self, feats, rois):
        return rois  # the "features" of a RoI are its coordinates


class _Head:
    """Stand-in for Shared2FCInstanceMILHead: deterministic logits, the official loss_mil."""

    def __init__(self, ns: dict, weights: dict, record: dict) -> None:
        self.weights = weights
        self.record = record
        self.num_stages = 2
        self.with_loss_pseudo = False
        self.num_classes = len(weights["bc"][1])
        MILLoss = ns["MILLoss"]
        self.loss_mil1 = MILLoss(binary_ins=False, loss_weight=0.25, loss_type="binary_cross_entropy")
        self.loss_mil2 = MILLoss(binary_ins=False, loss_weight=0.25, loss_type="gfocal_loss")
        self._loss_mil = types.MethodType(ns["loss_mil"], self)

    def __call__(self, rois, stage):
        cls, ins = head_logits(rois[:, 1:5], self.weights, stage)
        return cls, ins, None

    def loss_mil(self, stage, cls_score, *args, **kwargs):
        self.record.setdefault("loss_input_cls", {})[stage] = cls_score.detach().clone()
        return self._loss_mil(stage, cls_score, *args, **kwargs)


class _RoIHead:
    def __init__(self, ns: dict, weights: dict, record: dict) -> None:
        for name, fn in ns["sap_head"].items():
            setattr(self, name, types.MethodType(fn, self))
        self.num_stages = 2
        self.topk1 = self.topk2 = 1
        self.with_bbox = True
        self.with_shared_head = False
        self.test_mean_iou = False
        self.bbox_roi_extractor = _Extractor()
        self.bbox_head = _Head(ns, weights, record)
        self.record = record
        official_merge_single = self.merge_box_single

        def merge_box_single(*args):
            boxes, filtered, scores = official_merge_single(*args)
            record.setdefault("top1_boxes", []).append(boxes.detach().clone())
            return boxes, filtered, scores

        self.merge_box_single = merge_box_single
        official_forward = self.forward_train

        def forward_train(stage, *args, **kwargs):
            out = official_forward(stage, *args, **kwargs)
            record.setdefault("stages", {})[stage] = [v for v in out]
            return out

        self.forward_train = forward_train


class _MaskHead:
    def __init__(self, record):
        self.record = record

    def forward_train(self, epoch, x, gt_labels, pseudo_masks, img, mask_list, img_metas, **kwargs):
        self.record["pseudo_masks"] = pseudo_masks
        self.record["mask_list"] = mask_list
        self.record["mask_gt_bboxes"] = [b.clone() for b in kwargs["gt_bboxes"]]
        return {"loss_mask": torch.zeros(())}


class _Masks:
    """``gt_masks`` of one image: mask ``q`` encodes ``q`` in 8 binary pixels."""

    def __init__(self, n: int) -> None:
        self.n = n

    def to_tensor(self, dtype, device):
        q = torch.arange(self.n)
        bits = ((q[:, None] >> torch.arange(8)[None]) & 1).bool()
        return bits.reshape(self.n, 1, 8).to(dtype)


def _decode(masks: torch.Tensor) -> list[int]:
    bits = masks.reshape(-1, 8).long()
    return [int(v) for v in (bits * (1 << torch.arange(8))).sum(1)]


# ---------------------------------------------------------------------------------------------
# the tiny bag
# ---------------------------------------------------------------------------------------------

def make_case(seed: int, scale: float, scale_ins: float) -> dict:
    """Two images, five points, six proposals each, known boxes; head weights seeded."""
    rng = np.random.default_rng(seed)
    images = [{"hw": [120, 160]}, {"hw": [100, 140]}]
    # image 0: two class-0 points close together + one class-1; image 1: classes 1 and 2
    points = [[[40.0, 50.0], [70.0, 55.0], [120.0, 80.0]], [[30.0, 40.0], [95.0, 60.0]]]
    labels = [[0, 0, 1], [1, 2]]
    # true boxes: image 0 centred on the points (1×1), image 1 ground-truth-like boxes whose
    # centres are not the points (exercises PDG's point source)
    true = [[[p[0] - 0.5, p[1] - 0.5, p[0] + 0.5, p[1] + 0.5] for p in points[0]],
            [[10.0, 20.0, 56.0, 66.0], [70.0, 30.0, 128.0, 96.0]]]

    def bag(px, py, big):
        part = [px - 8, py - 6, px + 9, py + 7]
        mid = [px - 18, py - 15, px + 20, py + 16]
        whole = [px - 30, py - 25, px + 32 + big, py + 27]
        return [part, mid, whole, [px - 17, py - 14, px + 19, py + 17],
                [px - 29, py - 24, px + 33 + big, py + 28], [px - 35, py - 30, px + 40 + big, py + 33]]

    proposals = []
    for img, pts in zip(images, points):
        h, w = img["hw"]
        per = []
        for i, (px, py) in enumerate(pts):
            boxes = np.array(bag(px, py, 20 * (i % 2)), dtype=np.float64)
            boxes += rng.integers(-2, 3, size=boxes.shape)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            per.append(boxes.tolist())
        proposals.append(per)
    num_classes = 3
    weights = {"scale": scale, "scale_ins": scale_ins, "offset": 3.0,
               "Wc": [rng.normal(0, 1.5, (5, num_classes + 1)).tolist(), rng.normal(0, 1.5, (5, num_classes)).tolist()],
               "bc": [rng.normal(0, 0.5, num_classes + 1).tolist(), rng.normal(0, 0.5, num_classes).tolist()],
               "Wi": [rng.normal(0, 1.5, (5, num_classes + 1)).tolist(), rng.normal(0, 1.5, (5, num_classes)).tolist()],
               "bi": [rng.normal(0, 0.5, num_classes + 1).tolist(), rng.normal(0, 0.5, num_classes).tolist()]}
    return {"seed": seed, "num_classes": num_classes, "images": images, "points": points, "labels": labels,
            "true_bboxes_xyxy": true, "proposals_xyxy": proposals, "head": weights}


def f32(a) -> str:
    """A float32 array as base64 of its little-endian bytes (shape kept by the reader)."""
    return base64.b64encode(np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes()).decode("ascii")


def run_official(ns: dict, case: dict, torch_seed: int) -> dict:
    record: dict = {}
    det_ns = ns["det_ns"]
    det = types.SimpleNamespace()
    det.num_stages = 2
    num_neg = case["num_neg"]
    det.train_cfg = {"base_proposal": {"gen_num_neg": 0}, "fine_proposal": {"gen_num_neg": num_neg}}
    det.test_cfg = types.SimpleNamespace(rpn=None)
    det.extract_feat = lambda img: [None] * 5
    det.roi_head = _RoIHead(ns, case["head"], record)
    det.mask_head = _MaskHead(record)
    official_neg = det_ns["gen_negative_proposals"]

    def gen_negative_proposals(*args, **kwargs):
        out = official_neg(*args, **kwargs)
        record["neg"] = out
        return out

    det_ns["gen_negative_proposals"] = gen_negative_proposals
    forward_train = types.MethodType(det_ns["forward_train"], det)
    gt_bboxes = [torch.tensor(np.array(p).reshape(-1, 4), dtype=torch.float32) for p in case["proposals_xyxy"]]
    gt_true = [torch.tensor(t, dtype=torch.float32) for t in case["true_bboxes_xyxy"]]
    gt_labels = [torch.tensor(lb, dtype=torch.long) for lb in case["labels"]]
    gt_masks = [_Masks(len(b)) for b in gt_bboxes]
    metas = [{"img_shape": (im["hw"][0], im["hw"][1], 3)} for im in case["images"]]
    torch.manual_seed(torch_seed)
    losses = forward_train(torch.zeros(len(metas), 3, 8, 8), metas, gt_bboxes, gt_masks, gt_true, gt_labels)
    # the uniform draws of NPG: the only torch.rand calls, 4 per image (x1, y1, x2, y2)
    torch.manual_seed(torch_seed)
    draws = [[torch.rand(num_neg) for _ in range(4)] for _ in metas]
    for (ux1, uy1, ux2, uy2), meta, boxes in zip(draws, metas, record["neg"][0]):
        h, w, _ = meta["img_shape"]
        x1 = -0.2 * w + ux1 * (1.2 * w)
        assert torch.equal(x1, boxes[:num_neg, 0]), "NPG draws out of order"
    st0, st1 = record["stages"][0], record["stages"][1]
    n_per = [len(p) for p in case["points"]]
    top1 = record["top1_boxes"]  # merge_box_single per image, stage 0 then stage 1
    neg_boxes, neg_weights = record["neg"]
    out = {
        "losses": {k: float(v) for k, v in losses.items() if k in
                   ("stage0_loss_instance_mil", "stage1_loss_instance_mil", "stage1_neg_loss")},
        "stage0": {
            "pdg_weighted_cls": record["loss_input_cls"][0].reshape(-1, record["loss_input_cls"][0].shape[-1]).tolist(),
            "scores": st0[3].tolist(),             # dynamic weight (cls × ins at the label), P×6
            "top1_boxes": [b.tolist() for b in top1[:2]],
            "mined_boxes": [b.tolist() for b in st0[1]],
            "label_weights": st0[2].tolist(),      # stage-0 bag score sum, P
        },
        "ppg_boxes": [b.reshape(-1, 26, 4).tolist() for b in st0[4]],
        "npg": {"draws_f32": [f32(torch.stack(d)) for d in draws],      # 4×n per image
                "boxes_f32": [f32(b) for b in neg_boxes],                  # N×4 per image
                "weights": [[int(v) for v in w] for w in neg_weights],
                "num_random": num_neg},
        "stage1": {
            "scores": st1[3].tolist(),             # P×26
            "top1_boxes": [b.tolist() for b in top1[2:4]],
            "mined_boxes": [b.tolist() for b in record["mask_gt_bboxes"]],  # +1 on x2, y2 (official)
        },
        "final_index": [[q % 6 for q in _decode(m)] for m in record["pseudo_masks"]],
        "mps_order": [[[q % 6 for q in _decode(r)] for r in ml.permute(1, 0, 2, 3)] for ml in record["mask_list"]],
    }
    # the mined stage-1 boxes before the +1 the detector adds for the mask head
    out["stage1"]["mined_boxes"] = [[[b[0], b[1], b[2] - 1, b[3] - 1] for b in img] for img in out["stage1"]["mined_boxes"]]
    out["points_per_image"] = n_per
    return out


def make_select_golden(sapnet_root: Path) -> dict:
    ns = load_official(sapnet_root)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official stage-0 code calls .cuda()
    cases = []
    for seed, scale, scale_ins, torch_seed, num_neg in [(0, 1.0, 1.0, 0, 500), (1, 1.5, 6.0, 1, 100),
                                                        (2, 1.0, 12.0, 2, 100)]:
        case = make_case(seed, scale, scale_ins)
        case["torch_seed"] = torch_seed
        case["num_neg"] = num_neg
        case["official"] = run_official(ns, case, torch_seed)
        cases.append(case)
    return {"source": "zhaoyangwei123/SAPNet@ed0d086 TOV_mmdetection/mmdet (SAPNet.forward_train, "
                      "SAPHead, Shared2FCInstanceMILHead.loss_mil, MILLoss, gen_negative_proposals)",
            "torch": torch.__version__, "cases": cases}


def make_nms_golden(adelaidet_root: Path) -> dict:
    ns: dict = {"torch": torch}
    defs_from(adelaidet_root / "adet/modeling/solov2/utils.py", ["matrix_nms"], ns)
    rng = np.random.default_rng(0)
    k, h, w = 10, 16, 16
    masks = np.zeros((k, h, w), dtype=bool)
    for i in range(k):
        y0, x0 = rng.integers(0, 8, 2)
        masks[i, y0:y0 + rng.integers(4, 9), x0:x0 + rng.integers(4, 9)] = True
    masks[3] = masks[1]  # an exact duplicate
    labels = rng.integers(0, 3, k)
    scores = np.sort(rng.uniform(0.1, 0.95, k))[::-1].astype(np.float32)  # the caller sorts
    t = torch.from_numpy(masks)
    sums = t.reshape(k, -1).sum(1).float()
    out = {"source": "aim-uofa/AdelaiDet adet/modeling/solov2/utils.py matrix_nms",
           "masks": masks.astype(int).tolist(), "labels": labels.tolist(), "scores": scores.tolist()}
    for kernel in ("gaussian", "linear"):
        dec = ns["matrix_nms"](torch.from_numpy(labels), t, sums, torch.from_numpy(scores), sigma=2.0, kernel=kernel)
        out[kernel] = dec.tolist()
    return out


def check_export(sapnet_root: Path, path: Path) -> None:
    """Run the official ``CocoFmtDataset._parse_ann_info`` on every image of ``path``."""
    ns: dict = {"np": np}
    defs_from(sapnet_root / MMDET / "datasets/cocofmt.py", ["CocoFmtDataset._parse_ann_info"], ns)
    data = json.loads(path.read_text())
    cats = [c["id"] for c in data["categories"]]
    self = types.SimpleNamespace(train_ignore_as_bg=True, cat_ids=cats, cat2label={c: i for i, c in enumerate(cats)})
    by_image: dict = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    total = 0
    for img in data["images"]:
        anns = by_image.get(img["id"], [])
        info = dict(img, filename=img["file_name"])
        ann = ns["_parse_ann_info"](self, info, anns)
        n = len(ann["labels"])
        if n == 0:
            continue
        assert ann["bboxes"].shape == (6 * n, 4) and len(ann["masks"]) == 6 * n, "6 proposals per point"
        assert ann["true_bboxes"].shape == (n, 4) and len(ann["anns_id"]) == n, "true_bbox / area rules"
        total += n
    print(f"official loader read {total} annotations of {len(data['images'])} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sapnet", type=Path, required=True, help="checkout of zhaoyangwei123/SAPNet")
    ap.add_argument("--adelaidet", type=Path, help="checkout of aim-uofa/AdelaiDet")
    ap.add_argument("--out", type=Path, default=Path("tests/data/golden"))
    ap.add_argument("--check-export", type=Path, help="a `sap proposals export --format sapnet` file")
    args = ap.parse_args()
    if args.check_export:
        check_export(args.sapnet, args.check_export)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sapnet_select.json").write_text(json.dumps(make_select_golden(args.sapnet)))
    if args.adelaidet:
        (args.out / "solov2_matrix_nms.json").write_text(json.dumps(make_nms_golden(args.adelaidet)))
    print(f"golden vectors written to {args.out}")


if __name__ == "__main__":
    main()
