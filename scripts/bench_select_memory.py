"""Peak memory of `sap select` against the number of images (issue: flat memory in every stage).

For each count N (30, 100, 300 by default) the script makes a data set of N images by repeating
the 100-image COCO subset (new image and annotation ids, the same files; QC points with 6
synthetic SAM-like proposals each, the same for every repeat of an image), stores the bags as a
`sap proposals` cache and as a SAPNet-format JSON, and runs the real command, `sap select`, in a
child process:

* ``cache``: bags streamed from the cache, one image at a time, in each data-loading worker;
* ``json`` (the naive reference): the SAPNet-format JSON, every bag in memory in every process.

It reports the peak resident memory of the `sap select` process (its VmHWM) and the peak of
the sum over its process tree (the data-loading workers included, sampled every 50 ms), with
the wall time. Defaults: ResNet-18 from random weights, 1 epoch, short side 320, batch 4,
2 workers (training memory is what dominates; the counts show whether it grows with N)::

    python scripts/bench_select_memory.py [--counts 30,100,300] [--min-size 320] [--sources cache,json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.core.sapnet_format import bags_to_sapnet  # noqa: E402
from pseudolabel.testing.synthetic import synthetic_bags, write_bags_cache  # noqa: E402


def repeated(points: dict, bags: dict, n: int) -> tuple[dict, dict]:
    """``n`` images: the images of ``points`` cycled, with fresh image and annotation ids, and
    the same bags under the new ids (so only the base images' bags are ever computed)."""
    by_img: dict[int, list] = {}
    for a in points["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    base = [im for im in points["images"] if by_img.get(im["id"]) and bags.get(im["id"])]
    images, anns, out_bags = [], [], {}
    for i in range(n):
        src = base[i % len(base)]
        images.append({**src, "id": i + 1})
        bag_of = {b.ann_id: b for b in bags[src["id"]]}
        for a in by_img[src["id"]]:
            new_id = len(anns) + 1
            anns.append({**a, "id": new_id, "image_id": i + 1})
            if a["id"] in bag_of:
                out_bags.setdefault(i + 1, []).append(replace(bag_of[a["id"]], ann_id=new_id, image_id=i + 1))
    return {**{k: v for k, v in points.items() if k not in ("images", "annotations")}, "images": images,
            "annotations": anns}, out_bags


def tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS (KiB) over ``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def vm_hwm_kib(pid: int) -> int:
    """The high-water mark of ``pid``'s resident memory (VmHWM, KiB); 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def run_measured(cmd: list[str], env: dict) -> tuple[int, float, float, float]:
    """Run ``cmd``; returns ``(exit code, wall s, peak RSS of the process MiB, peak tree RSS MiB)``.

    The process's own peak is its VmHWM, read every 50 ms until it exits; the tree's is the
    largest sum of VmRSS over the process and its descendants seen at those moments.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    own, tree = [0], [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            own[0] = max(own[0], vm_hwm_kib(proc.pid))
            tree[0] = max(tree[0], tree_rss_kib(proc.pid))
            done.wait(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out = proc.stdout.read()
    done.set()
    thread.join()
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(out[-3000:])
    return proc.returncode, wall, own[0] / 1024, tree[0] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SAP_COCO100", REPO.parent / "shared" / "data" / "coco_train2017_100")))
    ap.add_argument("--counts", default="30,100,300")
    ap.add_argument("--sources", default="cache,json", help="cache (streamed) and/or json (all in memory)")
    ap.add_argument("--method", default="sapnet")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--min-size", type=int, default=320)
    ap.add_argument("--max-size", type=int, default=533)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: temporary)")
    args = ap.parse_args()

    gt0 = json.loads((args.data / "annotations.json").read_text())
    points0, _ = derive_points(gt0, "qc", seed=0)
    bags0 = synthetic_bags(gt0, points0, seed=0)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_select_memory_"))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    rows = []
    for n in [int(c) for c in args.counts.split(",")]:
        d = work / f"n{n}"
        d.mkdir(parents=True, exist_ok=True)
        points, bags = repeated(points0, bags0, n)
        (d / "points.json").write_text(json.dumps(points))
        write_bags_cache(d / "cache", points, bags, args.data / "images")
        (d / "sapnet.json").write_text(json.dumps(bags_to_sapnet(points, bags)))
        n_points = sum(len(b) for b in bags.values())
        del bags
        for source in args.sources.split(","):
            proposals = d / "cache" if source == "cache" else d / "sapnet.json"
            cmd = [sys.executable, str(REPO / "cli.py"), "select", "--ann", str(d / "points.json"),
                   "--proposals", str(proposals), "--images", str(args.data / "images"),
                   "--out", str(d / f"{source}.json"), "--method", args.method, "--backbone", "resnet18",
                   "--backbone-weights", "none", "--epochs", str(args.epochs), "--min-size", str(args.min_size),
                   "--max-size", str(args.max_size), "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers)]
            code, wall, own, tree = run_measured(cmd, env)
            rows.append((n, n_points, source, code, wall, own, tree))
            print(f"{n:5d} images {n_points:5d} points  {source:5s}  exit {code}  wall {wall:7.1f} s  "
                  f"peak RSS sap select {own:7.0f} MiB  process tree {tree:7.0f} MiB", flush=True)
    print(f"\n`sap select --method {args.method}` R18 random weights, {args.epochs} epoch(s), input "
          f"{args.min_size}x{args.max_size}, batch {args.batch_size}, {args.workers} workers")
    print("| images | points | bags from | peak RSS, sap select (MiB) | peak RSS, with workers (MiB) | wall (s) |")
    print("|---|---|---|---|---|---|")
    for n, n_points, source, code, wall, own, tree in rows:
        print(f"| {n} | {n_points} | {source} | {own:.0f} | {tree:.0f} | {wall:.0f} |")
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
