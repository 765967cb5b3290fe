"""Benchmark every proposal engine: encoder seconds per image and decoder milliseconds per point.

All engines see the same photos (the CC-BY COCO photos of tests/data, or ``--data``) and the same
points (each object's centre, ``sap points --mode center``), in fp32 and bf16 side by side. The
decoder figure is the ``point`` prompt (3 outputs per point) in chunks of the device's default
prompt batch, as `sap proposals` runs it. Weights are random (none can be downloaded on our
machines), so timings are real and masks are not.

The SAM v1 path is also timed against its code at another git revision (``--before``, default
``main``) on the same model object, image by image in alternation, so a regression shows as a
ratio within one run.

    python scripts/bench_engines.py [--engines sam_vit_b,sam2.1_hiera_t,...] [--images 5]
        [--precisions fp32,bf16] [--before main] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.coco import load_coco_json  # noqa: E402
from pseudolabel.core.engines.base import default_prompt_batch  # noqa: E402
from pseudolabel.core.engines.loading import load_model  # noqa: E402
from pseudolabel.core.engines.registry import ENGINES, FAMILIES, availability  # noqa: E402
from pseudolabel.core.images import load_image_rgb  # noqa: E402
from pseudolabel.core.points import collect_points, derive_points  # noqa: E402

DATA = REPO / "tests" / "data" / "coco_cc_by"


def photos_and_points(data: Path, n_images: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(RGB image, P×2 centre points (x, y))]`` for the first ``n_images`` images with objects."""
    gt = load_coco_json(data / "annotations.json")
    pts, _ = derive_points(gt, "center")
    by_image, _ = collect_points(pts)
    out = []
    for im in sorted(gt["images"], key=lambda i: i["id"]):
        if by_image.get(im["id"]) and len(out) < n_images:
            xy = np.array([[p.x, p.y] for p in by_image[im["id"]]], dtype=np.float64)
            out.append((load_image_rgb(data / "images" / im["file_name"], (im["width"], im["height"])), xy))
    return out


def time_engine(engine, photos, chunk: int) -> tuple[list[float], float, int]:
    """Encoder seconds per image, decoder seconds in all, points decoded."""
    enc, dec, n = [], 0.0, 0
    for rgb, xy in photos:
        t0 = engine.timings.encoder
        emb = engine.encode(rgb)
        enc.append(engine.timings.encoder - t0)
        d0 = engine.timings.decoder
        for s in range(0, len(xy), chunk):
            part = xy[s:s + chunk]
            engine.decode(emb, part[:, None, :], np.ones((len(part), 1)))
        dec += engine.timings.decoder - d0
        n += len(xy)
    return enc, dec, n


def engine_at_revision(rev: str, tmp: Path):
    """The SAM v1 engine class of git revision ``rev`` (imported from an extracted copy of its core)."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pseudolabel/core"], check=True,
                          capture_output=True).stdout
    root = tmp / "before"
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    pkg = root / "pseudolabel"
    pkg.rename(root / "sap_before")
    (root / "sap_before" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    for mod, cls in (("sap_before.core.engines.sam1", "SamEngine"), ("sap_before.core.sam", "SamEngine")):
        try:
            return getattr(importlib.import_module(mod), cls)
        except ModuleNotFoundError:
            continue
    raise SystemExit(f"revision {rev} has no SAM v1 engine")


def before_after(rev: str, photos, precisions, chunk: int, tmp: Path) -> dict:
    """SAM vit_b at ``rev`` and now, one model object, alternating image by image."""
    from pseudolabel.core.engines.sam1 import SamEngine

    Before = engine_at_revision(rev, tmp)
    model, ckpt = load_model("sam_vit_b", "none")
    out = {}
    for prec in precisions:
        old, new = Before(model, "vit_b", ckpt, "cpu", prec), SamEngine(model, "sam_vit_b", ckpt, "cpu", prec)
        res = {"before": ([], 0.0, 0), "after": ([], 0.0, 0)}
        for photo in photos:
            for key, eng in (("before", old), ("after", new)):
                e, d, n = time_engine(eng, [photo], chunk)
                res[key] = (res[key][0] + e, res[key][1] + d, res[key][2] + n)
        out[prec] = {k: {"encoder_s": float(np.mean(e)), "decoder_ms_per_point": 1000 * d / n}
                     for k, (e, d, n) in res.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=",".join(n for n, s in ENGINES.items() if s.url))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--before", default="main", help="git revision for the SAM v1 comparison ('' = skip)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    photos = photos_and_points(args.data, args.images)
    chunk = default_prompt_batch(torch.device("cpu"))
    n_points = sum(len(xy) for _, xy in photos)
    print(f"{len(photos)} photos, {n_points} points, {torch.get_num_threads()} torch threads, "
          f"{chunk} prompts per decoder call, random weights")
    report: dict = {"images": len(photos), "points": n_points, "threads": torch.get_num_threads(), "engines": {}}
    print(f"| engine | cached MiB/image | " + " | ".join(f"encoder s/image {p} | decoder ms/point {p}"
                                                      for p in precisions) + " |")
    print("|---|---|" + "---|---|" * len(precisions))
    for name in [n for n in args.engines.split(",") if n]:  # --engines '' times only --before
        if (why := availability(name)) is not None:
            print(f"| {name} | not available: {why} |")
            continue
        model, ckpt = load_model(name, "none")
        module = importlib.import_module(f"pseudolabel.core.engines.{FAMILIES[ENGINES[name].family].module}")
        row = {}
        for prec in precisions:
            engine = module.ENGINE(model, name, ckpt, "cpu", prec)
            enc, dec, n = time_engine(engine, photos, chunk)
            row[prec] = {"encoder_s": float(np.mean(enc)), "decoder_ms_per_point": 1000 * dec / n}
        del model
        mib = FAMILIES[ENGINES[name].family].cached_bytes / 2 ** 20
        report["engines"][name] = row
        print(f"| {name} | {mib:.0f} | " + " | ".join(
            f"{row[p]['encoder_s']:.2f} | {row[p]['decoder_ms_per_point']:.0f}" for p in precisions) + " |", flush=True)
    if args.before:
        with tempfile.TemporaryDirectory() as d:
            ba = before_after(args.before, photos, precisions, chunk, Path(d))
        report["sam_vit_b_before_after"] = {"revision": args.before, **ba}
        print(f"\nSAM vit_b, {args.before} vs this tree (same model, alternating image by image):")
        for prec, r in ba.items():
            b, a = r["before"], r["after"]
            print(f"  {prec}: encoder {b['encoder_s']:.2f} -> {a['encoder_s']:.2f} s/image "
                  f"({a['encoder_s'] / b['encoder_s']:.2f}x), decoder {b['decoder_ms_per_point']:.0f} -> "
                  f"{a['decoder_ms_per_point']:.0f} ms/point ({a['decoder_ms_per_point'] / b['decoder_ms_per_point']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
