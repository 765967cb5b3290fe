"""Benchmark of SOLOv2 training and inference on this machine (CPU unless --device says otherwise).

    python scripts/bench_train.py [--backbones resnet18,resnet50] [--size 640] [--iters 2] [--device cpu]
    python scripts/bench_train.py --memory 30,100,300 [--engines torch,detectron2]

Prints, for each backbone at full SOLOv2 width (FPN 256, towers of 512, 80 classes) and a
``size×(4/3·size)`` input:
* training images/s (batch 2, five synthetic instances per image, SGD step included);
* inference ms/image with top-k before upsampling (ours) against upsampling every candidate
  before NMS (the reference), both with thresholds at 0 so that all ``nms_pre = 500``
  candidates reach matrix NMS (the worst case), and the peak memory of each;
and matrix NMS on 500 candidate masks at stride 4 against a naive Python-loop greedy mask NMS.
Peak memory is the process's peak resident set (Linux ``VmHWM``, reset before each phase; it
includes the model and what the allocator kept from earlier phases, so inference is measured
before training) on CPU, ``torch.cuda.max_memory_allocated`` on GPU. Masks are returned at twice
the input size (an upscaled image), which makes upsampling matter.

``--memory N1,N2,...`` instead runs whole ``sap train`` processes, one epoch over N images (the
six test photos repeated under new ids) at a small size, and prints the peak memory of each
process tree (PSS of the trainer and its data-loading workers, sampled every 0.2 s): the figure
must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from segtrain.model import SOLOv2, SOLOv2Config
from segtrain.postprocess import matrix_nms
from segtrain.targets import targets_from_masks


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(h: int, w: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    masks = torch.zeros(n, h, w, dtype=torch.uint8)
    for i in range(n):
        bh, bw = int(h * (0.1 + 0.5 * torch.rand(1, generator=g))), int(w * (0.1 + 0.5 * torch.rand(1, generator=g)))
        y, x = int((h - bh) * torch.rand(1, generator=g)), int((w - bw) * torch.rand(1, generator=g))
        masks[i, y:y + bh, x:x + bw] = 1
    return image, targets_from_masks(masks, torch.arange(n) % 80)


def bench_backbone(name: str, size: int, iters: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = SOLOv2(SOLOv2Config(num_classes=80, backbone=name, backbone_norm="gn")).to(device)
    h, w = size, size * 4 // 3
    batch_items = [_synthetic(h, w, 5, s) for s in range(2)]
    model.eval()
    model.cfg.inference.score_thr = 0.0
    model.cfg.inference.update_thr = 0.0
    image = batch_items[0][0]
    out: dict[str, float] = {}
    for label, upsample_all in (("topk", False), ("upsample_all", True)):
        model.predict([image], [(2 * h, 2 * w)], upsample_all=upsample_all)  # warm-up
        _sync(device)
        _reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            preds = model.predict([image], [(2 * h, 2 * w)], upsample_all=upsample_all)
        _sync(device)
        out[f"infer_ms_{label}"] = 1000 * (time.perf_counter() - t0) / iters
        out[f"infer_peak_mib_{label}"] = _peak_mib(device)
        out[f"kept_{label}"] = len(preds[0])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train()

    def step() -> None:
        batch, sizes = model.preprocess([im for im, _ in batch_items])
        losses = model(batch, sizes, [t for _, t in batch_items])
        opt.zero_grad()
        (losses["loss_cate"] + losses["loss_mask"]).backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    train_s = time.perf_counter() - t0
    train_peak = _peak_mib(device)

    out.update(train_img_per_s=2 * iters / train_s, train_peak_mib=train_peak)
    return out


def naive_mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_thr: float = 0.5) -> list[int]:
    """Greedy mask NMS, one pair at a time in Python (the reference)."""
    order = scores.argsort(descending=True).tolist()
    flat = masks.reshape(len(masks), -1).bool()
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            inter = (flat[i] & flat[j]).sum().item()
            union = (flat[i] | flat[j]).sum().item()
            if union and inter / union > iou_thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def bench_matrix_nms(n: int, size: int, device: torch.device, repeats: int = 3) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h, w = size // 4, size // 3
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):  # clusters of overlapping boxes, as a detector produces
        cy, cx = int(h * torch.rand(1, generator=g)), int(w * torch.rand(1, generator=g))
        r = int(5 + 20 * torch.rand(1, generator=g))
        masks[i, max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = True
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = torch.rand(n, generator=g)
    masks, labels, scores = masks.to(device), labels.to(device), scores.to(device)
    matrix_nms(masks, labels, scores)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        matrix_nms(masks, labels, scores)
    _sync(device)
    fast = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    naive_mask_nms(masks.cpu(), scores.cpu())
    slow = time.perf_counter() - t0
    return {"matrix_nms_ms": 1000 * fast, "naive_nms_ms": 1000 * slow, "mask_hw": (h, w)}


REPO = Path(__file__).resolve().parents[1]


def tree_pss_mib(pid: int) -> float:
    """Proportional memory (PSS: shared pages split between their users) of a process and all its
    descendants, MiB; a forked data worker's pages shared with the trainer are not counted twice."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def repeated_coco(n: int) -> dict:
    """The test photos' COCO file with ``n`` images: the six repeated under new image ids."""
    coco = json.loads((REPO / "tests" / "data" / "coco_cc_by" / "annotations.json").read_text())
    images, anns = [], []
    for k in range(n):
        im = coco["images"][k % len(coco["images"])]
        images.append(dict(im, id=k + 1))
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                anns.append(dict(a, id=len(anns) + 1, image_id=k + 1))
    return dict(coco, images=images, annotations=anns)


def train_peak_mib(n: int, engine: str, folder: Path) -> tuple[float, float]:
    """Peak PSS (MiB) and seconds of ``sap train`` over one epoch of ``n`` images."""
    ann = folder / f"train_{n}.json"
    ann.write_text(json.dumps(repeated_coco(n)))
    cfg = folder / "narrow.yaml"
    cfg.write_text("model:\n  head_channels: 64\n  head_convs: 2\n  mask_channels: 32\n  kernel_dim: 64\n")
    cmd = [sys.executable, "-c", "import cli; cli.main()", "train", "--engine", engine, "--train", str(ann),
           "--images", str(REPO / "tests" / "data" / "coco_cc_by" / "images"), "--out", str(folder / f"{engine}_{n}"),
           "--backbone", "resnet18", "--backbone-weights", "none", "--iters", str(n // 6), "--batch", "6",
           "--min-size", "96", "--max-size", "160", "--workers", "2", "--checkpoint-period", "0", "--device", "cpu",
           "--keep-empty-images", "--config", str(cfg)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    t0, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        peak = max(peak, tree_pss_mib(proc.pid))
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"sap train failed ({engine}, {n} images): {proc.stderr.read()[-2000:]}")
    return peak, time.perf_counter() - t0


def bench_memory(counts: list[int], engines: list[str]) -> None:
    print("peak memory (PSS) of `sap train` (trainer and its 2 data workers), one epoch at short side 96, "
          "R18, batch 6, over N images:")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            row = [train_peak_mib(n, engine, Path(tmp)) for n in counts]
            print(f"  {engine:11s} " + "  ".join(f"N={n}: {mib:.0f} MiB ({sec:.0f} s)"
                                                 for n, (mib, sec) in zip(counts, row)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet18,resnet50")
    ap.add_argument("--size", type=int, default=640, help="short side of the input")
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--memory", default="", help="image counts for the peak-memory runs of sap train, e.g. 30,100,300")
    ap.add_argument("--engines", default="torch,detectron2", help="engines of the --memory runs")
    args = ap.parse_args()
    if args.memory:
        bench_memory([int(n) for n in args.memory.split(",")], args.engines.split(","))
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"input {args.size}x{args.size * 4 // 3}")
    nms = bench_matrix_nms(500, args.size, device)
    print(f"matrix NMS, 500 candidates at stride 4 ({nms['mask_hw'][0]}x{nms['mask_hw'][1]}): "
          f"{nms['matrix_nms_ms']:.1f} ms  vs naive Python-loop greedy NMS {nms['naive_nms_ms']:.0f} ms "
          f"({nms['naive_nms_ms'] / nms['matrix_nms_ms']:.0f}x)")
    for name in args.backbones.split(","):
        r = bench_backbone(name, args.size, args.iters, device)
        print(f"{name}: train {r['train_img_per_s']:.2f} img/s (peak {r['train_peak_mib']:.0f} MiB); "
              f"inference {r['infer_ms_topk']:.0f} ms/img top-k before upsampling "
              f"(peak {r['infer_peak_mib_topk']:.0f} MiB) vs {r['infer_ms_upsample_all']:.0f} ms/img upsampling "
              f"all 500 candidates (peak {r['infer_peak_mib_upsample_all']:.0f} MiB); "
              f"{r['kept_topk']} masks kept")


if __name__ == "__main__":
    main()
