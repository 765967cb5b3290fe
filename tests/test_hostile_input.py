"""Hostile input against the command line of every stage (and of export, review and import):
one sentence, exit 2, nothing written.

Each case corrupts one thing — a mask's RLE, an image entry, a point, a category, the output
path, a checkpoint, a number — and runs the stage's real command line. Every case must end in
exit status 2 with a last stderr line ``error: ...`` that names the file (and the annotation or
image where the fault is in one), no traceback, nothing at the target path (nor its lock), and
within a time limit: a hang (pycocotools on a truncated RLE once spun forever) fails its case.

All cases run in one helper process (tests/hostile_driver.py) that reports each case as it
ends; the test holds the per-case time limit, and kills the helper on a hang (a new one goes on
with the next case).
"""

from __future__ import annotations

import copy
import json
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

import hostile_cases as more
from conftest import subset_coco
from pseudolabel.core.lock import lock_path
from pseudolabel.core.points import derive_points

REPO = Path(__file__).resolve().parents[1]
CASE_LIMIT_S = 120.0  # generous for an overloaded 2-core machine; a validation takes milliseconds
STARTUP_LIMIT_S = 600.0  # importing torch is not what is tested
STAGES = ("proposals", "select", "refine", "train", "predict", "eval", "viz", "pipeline", "export", "review",
          "import")
TINY_SAM = ["--engine", "sam_tiny", "--checkpoint", "none", "--precision", "fp32"]
BAD_ANN, BAD_IMG = 72, 86  # the annotation / image the data cases spoil (in tests/data/coco_cc_by)


# ---- what each case does to the input ---------------------------------------------------------

def _ann(coco: dict) -> dict:
    return next(a for a in coco["annotations"] if a["id"] == BAD_ANN)


def _img(coco: dict) -> dict:
    return next(im for im in coco["images"] if im["id"] == BAD_IMG)


def rle_garbage(coco: dict) -> None:
    _ann(coco)["segmentation"]["counts"] = "garbage!!"


def rle_truncated(coco: dict) -> None:
    seg = _ann(coco)["segmentation"]
    seg["counts"] = seg["counts"][: len(seg["counts"]) // 2]


def rle_runs_overflow(coco: dict) -> None:  # valid characters, runs covering far more than H×W
    _ann(coco)["segmentation"]["counts"] = "0" + "Z" * 6 + "1"


def absurd_size(coco: dict) -> None:
    _img(coco).update(width=10**6, height=10**6)


def width_text(coco: dict) -> None:
    _img(coco)["width"] = "512px"


def point_string(coco: dict) -> None:
    _ann(coco)["point"] = "12,30"


def unknown_category(coco: dict) -> None:
    _ann(coco)["category_id"] = 999


MASK_FAULTS = {"rle_garbage": rle_garbage, "rle_truncated": rle_truncated, "rle_runs_overflow": rle_runs_overflow}
IMAGE_FAULTS = {"absurd_size": absurd_size, "width_text": width_text}
ID_OF = {**{k: f"annotation {BAD_ANN}" for k in MASK_FAULTS}, **{k: f"image {BAD_IMG}" for k in IMAGE_FAULTS},
         "point_string": f"annotation {BAD_ANN}", "unknown_category": f"annotation {BAD_ANN}"}
FAULTS = {**MASK_FAULTS, **IMAGE_FAULTS, "point_string": point_string, "unknown_category": unknown_category}

# which data faults apply to which stage (the file each stage reads them from)
DATA_CASES = {
    "proposals": ["point_string", "unknown_category", *IMAGE_FAULTS],
    "select": ["point_string", "unknown_category", *IMAGE_FAULTS],
    "refine": [*MASK_FAULTS, *IMAGE_FAULTS, "unknown_category"],
    "train": [*MASK_FAULTS, *IMAGE_FAULTS, "unknown_category"],
    "predict": [*IMAGE_FAULTS, "unknown_category"],
    "eval": [*MASK_FAULTS, *IMAGE_FAULTS, "unknown_category"],
    "viz": [*MASK_FAULTS, *IMAGE_FAULTS],
    "pipeline": [*MASK_FAULTS, *IMAGE_FAULTS, "unknown_category", "point_string"],
    # a category unknown to export, review and import is reported by them, not an error
    "export": [*MASK_FAULTS, *IMAGE_FAULTS],
    "review": [*MASK_FAULTS, *IMAGE_FAULTS],
    "import": [*MASK_FAULTS, *IMAGE_FAULTS],  # in the reviewed file
}
FILE_OUT = {"select", "refine", "predict", "eval", "export", "import"}  # the others write a folder
OTHER_CASES = {
    "proposals": ["out_wrong_kind", "out_under_file", "not_checkpoint", "bad_number"],
    "select": ["out_wrong_kind", "out_under_file", "out_is_input", "not_checkpoint", "bad_number"],
    "refine": ["out_wrong_kind", "out_under_file", "out_is_input", "not_checkpoint", "bad_number"],
    "train": ["out_wrong_kind", "out_under_file", "not_checkpoint", "bad_number"],
    "predict": ["out_wrong_kind", "out_under_file", "out_is_input", "not_checkpoint", "bad_number"],
    "eval": ["out_wrong_kind", "out_under_file", "out_is_input", "missing_score"],
    "viz": ["out_wrong_kind", "out_under_file", "bad_number"],
    "pipeline": ["out_wrong_kind", "out_under_file", "not_checkpoint", "bad_number"],
    "export": ["out_wrong_kind", "out_under_file", "out_is_input", "bad_number"],
    "review": ["out_wrong_kind", "out_under_file", "bad_number"],
    "import": ["out_wrong_kind", "out_under_file"],  # --into: a folder that is no run, a path under a file
}
# issue 27's cases (tests/hostile_cases.py): inputs overwritten or read outside, ids, numbers, a full disk
ALL_CASES = [(s, c) for s in STAGES
             for c in DATA_CASES[s] + OTHER_CASES[s] + more.DATA_CASES.get(s, []) + more.OTHER_CASES.get(s, [])]


# ---- the valid world each case spoils one thing of ---------------------------------------------

@pytest.fixture(scope="module")
def world(coco_gt, coco_dir, tmp_path_factory, tiny_engine):
    """Valid inputs for every stage: ground truth, points, a proposal cache, a SOLOv2 checkpoint."""
    from pseudolabel.core.config import to_jsonable
    from pseudolabel.proposals.run import ProposalConfig, run_proposals
    from segtrain.checkpoint import save_checkpoint
    from segtrain.data import CategoryMap
    from segtrain.model import SOLOv2, SOLOv2Config

    d = tmp_path_factory.mktemp("hostile")
    gt = subset_coco(coco_gt, 2)
    assert BAD_ANN in {a["id"] for a in gt["annotations"]} and BAD_IMG in {i["id"] for i in gt["images"]}
    points, _ = derive_points(gt, "center")
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "points.json").write_text(json.dumps(points))
    run_proposals(d / "points.json", coco_dir / "images", d / "cache", ProposalConfig(precision="fp32"),
                  engine=tiny_engine)
    (d / "images_but_one").mkdir()  # a cache in which image BAD_IMG failed (its file is absent)
    for im in gt["images"]:
        if im["id"] != BAD_IMG:
            (d / "images_but_one" / im["file_name"]).symlink_to(coco_dir / "images" / im["file_name"])
    run_proposals(d / "points.json", d / "images_but_one", d / "cache_failed", ProposalConfig(precision="fp32"),
                  engine=tiny_engine)
    cats = CategoryMap.from_coco(gt)
    mcfg = SOLOv2Config(num_classes=len(cats.ids), backbone="resnet18", backbone_weights="none",
                        head_channels=16, head_convs=1, fpn_channels=16, mask_channels=8, kernel_dim=8)
    save_checkpoint(d / "model.pth", {"iter": 0, "model": SOLOv2(mcfg).state_dict(), "model_config": mcfg.to_dict(),
                                      "categories": cats.to_dict(), "train_config": to_jsonable({})})
    (d / "junk.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    (d / "a_file").write_text("a plain file\n")
    return {"dir": d, "gt": gt, "points": points, "images": coco_dir / "images"}


def _case(world: dict, stage: str, case: str, d: Path) -> dict:
    """``{"argv", "target", "expect" (substrings of the error line), "before" (what the target
    holds before: None = absent)}`` for one case, its files written under ``d``."""
    w = world["dir"]
    images = str(world["images"])
    gt, points = copy.deepcopy(world["gt"]), copy.deepcopy(world["points"])
    expect: list[str] = []
    if case in more.FAULTS:
        spoil_points = stage in ("proposals", "select")
        data = points if spoil_points else gt
        more.FAULTS[case][0](data)
        bad = d / ("points.json" if spoil_points else "gt.json")
        more.write_spoiled(data, bad)
        expect = [bad.name, more.FAULTS[case][1]]
    if case in FAULTS:
        spoil_points = stage in ("proposals", "select") or (stage == "pipeline" and case == "point_string")
        data = points if spoil_points else gt
        FAULTS[case](data)
        bad = d / ("points.json" if spoil_points else "gt.json")
        bad.write_text(json.dumps(data))
        expect = [bad.name, ID_OF[case]]
    pts_file = str(d / "points.json") if (d / "points.json").exists() else str(w / "points.json")
    gt_file = str(d / "gt.json") if (d / "gt.json").exists() else str(w / "gt.json")
    out = d / ("out.json" if stage in FILE_OUT else "out")
    if case == "out_wrong_kind":  # a folder where a file goes, a file where a folder goes
        if stage in FILE_OUT:
            out.mkdir()
        else:
            out.write_text("keep me\n")
        expect = [out.name]
    elif case == "out_under_file":
        out = w / "a_file" / f"{stage}-{out.name}"
        expect = ["a_file"]
    elif stage == "import":  # the target: a valid COCO file, updated in place (or left as it was)
        out.write_text(json.dumps(world["gt"]))
    elif case == "out_is_input":  # the output would overwrite the command's own input
        data = points if stage == "select" else gt
        out = d / ("points.json" if stage == "select" else "gt.json")
        out.write_text(json.dumps(data))
        pts_file = gt_file = str(out)
        expect = [out.name, "input"]
    junk = str(w / "junk.pth")
    if case == "not_checkpoint":
        expect = ["junk.pth"]
    extra: list[str] = []
    if stage == "proposals":
        argv = ["proposals", "--ann", pts_file, "--images", images, "--out", str(out), *TINY_SAM]
        if case == "not_checkpoint":
            argv[argv.index("none")] = junk
        if case == "bad_number":
            extra, expect = ["--points-per-batch", "-1"], ["--points-per-batch"]
    elif stage == "select":
        argv = ["select", "--ann", pts_file, "--proposals", str(w / "cache"), "--out", str(out),
                "--method", "sam-top1"]
        if case == "not_checkpoint":
            extra = ["--method", "mil", "--images", images, "--weights", junk, "--backbone", "resnet18"]
        if case == "bad_number":
            extra, expect = ["--method", "mil", "--images", images, "--epochs", "0"], ["--epochs"]
    elif stage == "refine":
        argv = ["refine", "--ann", gt_file, "--images", images, "--out", str(out), "--iters", "1", *TINY_SAM]
        if case == "not_checkpoint":
            argv[argv.index("none")] = junk
        if case == "bad_number":
            extra, expect = ["--iters", "0"], ["--iters"]
    elif stage == "train":
        argv = ["train", "--train", gt_file, "--images", images, "--out", str(out), "--backbone", "resnet18",
                "--backbone-weights", "none", "--iters", "1", "--batch", "1", "--workers", "0",
                "--min-size", "64", "--max-size", "96"]
        if case == "not_checkpoint":
            argv[argv.index("--backbone-weights") + 1] = junk
        if case == "bad_number":
            extra, expect = ["--lr", "nan"], ["--lr"]
    elif stage == "predict":
        argv = ["predict", "--weights", str(w / "model.pth"), "--images", images, "--out", str(out),
                "--ann", gt_file, "--workers", "0", "--min-size", "64", "--max-size", "96"]
        if case == "not_checkpoint":
            argv[argv.index("--weights") + 1] = junk
        if case == "bad_number":
            extra, expect = ["--batch", "0"], ["--batch"]
    elif stage == "eval":
        pseudo = gt_file
        gt_arg = str(w / "gt.json")
        argv = ["eval", "--gt", gt_arg, "--pseudo", pseudo, "--out", str(out)]
        if case == "missing_score":
            results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"]}
                       for a in world["gt"]["annotations"]]
            (d / "pred.json").write_text(json.dumps(results))
            argv = ["eval", "--gt", gt_arg, "--pred", str(d / "pred.json"), "--out", str(out)]
            expect = ["pred.json", "result 0"]
    elif stage == "viz":
        argv = ["viz", "overlay", "--ann", gt_file, "--images", images, "--out", str(out)]
        if case == "bad_number":
            extra, expect = ["--alpha", "nan"], ["--alpha"]
    elif stage == "export":
        argv = ["export", "--to", "coco-polygons", "--ann", gt_file, "--out", str(out)]
        if case == "bad_number":
            extra, expect = ["--tolerance", "nan"], ["--tolerance"]
    elif stage == "review":
        argv = ["review", "--ann", gt_file, "--images", images, "--out", str(out), "--no-thumbnails"]
        if case == "bad_number":
            extra, expect = ["--n", "0"], ["--n"]
    elif stage == "import":
        argv = ["import", "--from", "coco", gt_file, "--into", str(out)]
    else:  # pipeline
        cfg = {"images": images, "gt": gt_file, "out": str(out),
               "sam": {"engine": "sam_tiny", "checkpoint": "none", "precision": "fp32", "device": "cpu"},
               "select": {"method": "sam-top1"}, "refine": {"enabled": False},
               "train": {"backbone": "resnet18", "backbone_weights": "none", "iters": 1, "batch": 1,
                         "workers": 0, "min_size": "64", "max_size": 96}}
        if case == "point_string":
            cfg["points"] = pts_file
        if case == "not_checkpoint":
            cfg["sam"]["checkpoint"] = junk
        if case == "bad_number":
            cfg["train"]["base_lr"] = float("nan")
            expect = ["--lr"]
        (d / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["pipeline", "--config", str(d / "pipeline.yaml"), "--until", "proposals"]
    before = None
    if out.is_dir():
        before = sorted(p.name for p in out.iterdir())
    elif out.is_file():
        before = out.read_text()
    spec = {"argv": argv + extra, "target": str(out), "expect": expect, "before": before}
    return more.apply(spec, world, stage, case, d) if case in more.OTHER_CASES.get(stage, ()) else spec


_RESULTS: dict[str, dict] = {}


def _start_helper(names: list[str], cases: dict, tmp_root: Path, n: int):
    """A helper process running ``names`` in order; its queue of output lines."""
    spec = tmp_root / f"cases-{n}.json"
    spec.write_text(json.dumps([{"name": k, "argv": cases[k]["argv"], "full_disk": cases[k].get("full_disk")}
                                for k in names]))
    helper_err = tmp_root / f"helper-{n}.stderr"  # a file, not a pipe: it can never fill up and block
    with open(helper_err, "w") as err_file:
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "hostile_driver.py"), str(spec)],
                                stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=tmp_root)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    try:
        ready = lines.get(timeout=STARTUP_LIMIT_S)
    except queue.Empty:
        ready = None
    if not ready or not json.loads(ready).get("ready"):
        proc.kill()
        raise AssertionError(f"the helper did not start: {helper_err.read_text()[-2000:]}")
    return proc, lines, helper_err


def _run_all(world: dict, tmp_root: Path, selected: list[tuple[str, str]]) -> dict:
    """The ``selected`` cases in one helper process (one interpreter start, one import of torch),
    restarted after a case that hangs or kills it; the results by ``stage/case``."""
    if _RESULTS:
        return _RESULTS
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=tmp_root))  # a fresh folder should an earlier try have failed
    cases = {}
    for stage, case in selected:
        d = tmp_root / stage / case
        d.mkdir(parents=True)
        cases[f"{stage}/{case}"] = _case(world, stage, case, d)
    results: dict[str, dict] = {}
    remaining, n = list(cases), 0
    while remaining:
        proc, lines, helper_err = _start_helper(remaining, cases, tmp_root, n)
        n += 1
        for i, name in enumerate(remaining):
            try:
                line = lines.get(timeout=CASE_LIMIT_S)
            except queue.Empty:
                results[name] = {"hung": True}
            else:
                if line is not None:
                    results[name] = json.loads(line)
                    continue
                results[name] = {"crashed": proc.wait(), "stderr": helper_err.read_text()[-2000:]}
            remaining = remaining[i + 1:]  # a new helper goes on after the case that stopped this one
            break
        else:
            remaining = []
        proc.kill()
        proc.wait()
    _RESULTS.update({name: {**cases[name], **results[name]} for name in cases})
    return _RESULTS


@pytest.mark.timeout(1800)  # the first case selected runs them all (each under CASE_LIMIT_S)
@pytest.mark.parametrize("stage,case", ALL_CASES, ids=[f"{s}-{c}" for s, c in ALL_CASES])
def test_hostile_input_is_one_sentence_exit_2_and_leaves_nothing(stage, case, world, tmp_path_factory, request):
    selected = [tuple(item.callspec.params[k] for k in ("stage", "case")) for item in request.session.items
                if getattr(item, "originalname", "") == request.node.originalname]
    r = _run_all(world, tmp_path_factory.getbasetemp() / "hostile_runs", selected)[f"{stage}/{case}"]
    assert not r.get("hung"), f"{stage} hung on {case} (no answer within {CASE_LIMIT_S:.0f} s)"
    assert "rc" in r, f"{stage} {case}: the helper stopped before this case ({r})"
    err = r["stderr"]
    assert "Traceback" not in err, err[-3000:]
    assert r["rc"] == r.get("rc_expected", 2), f"exit {r['rc']}: {err[-2000:]}"
    assert r["seconds"] < CASE_LIMIT_S
    for path, digest in r.get("same_files", {}).items():  # an input is never overwritten
        assert more.sha256(Path(path)) == digest, f"{path} was changed"
    for path in r.get("absent", []):  # nothing written outside --out
        assert not Path(path).exists(), f"{path} was written"
    if r["rc"] != 2:  # finished, with failed images or points: named on the terminal
        for word in r["expect"]:
            assert word in err + r["stdout"], f"{word!r} not said in: {err[-1000:]} {r['stdout'][-1000:]}"
        return
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    for word in r["expect"]:
        assert word in lines[-1], f"{word!r} not named in: {lines[-1]}"
    for word in r.get("forbid", []):
        assert word not in lines[-1], f"{word!r} said in: {lines[-1]}"
    target = Path(r["target"])
    if r.get("leftovers_ok"):  # a full disk may leave what it had created; never a lock
        assert not lock_path(target).exists()
        return
    if r["before"] is None:
        assert not target.exists(), f"{target} was left behind"
    elif isinstance(r["before"], list):
        assert sorted(p.name for p in target.iterdir()) == r["before"]
    else:
        assert target.read_text() == r["before"]
    assert not lock_path(target).exists()


@pytest.mark.parametrize("argv,flag", [
    (["points", "--mode", "uniform", "--seed", "-1"], "--seed"),
    (["points", "--mode", "uniform", "--seed", "99999999999999999999"], "--seed"),
    (["corrupt", "--severity", "-1"], "--severity"),
    (["refine", "adapt", "--images", "IMAGES", "--rank", "0", *TINY_SAM], "--rank"),
], ids=["points-seed_negative", "points-seed_huge", "corrupt-severity_negative", "adapt-rank_zero"])
def test_the_numbers_of_the_other_commands_are_one_sentence(argv, flag, world, tmp_path, monkeypatch, capsys):
    """In this process (no SAM work happens before the check)."""
    from conftest import run_cli

    out = tmp_path / "out.json"
    gt = ["--ann" if argv[0] == "refine" else "--gt", str(world["dir"] / "gt.json")]
    argv = [str(world["images"]) if a == "IMAGES" else a for a in argv]
    code = run_cli([*argv, *gt, "--out", str(out)], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and flag in err
    assert not out.exists() and not (tmp_path / "out.config.yaml").exists()
