"""`sap pipeline` and `sap demo` end to end on CPU: tiny SAM, tiny selector and SOLOv2 schedules."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subset_coco
from pseudolabel.core.errors import InputError
from pseudolabel.pipeline import STAGES, Pipeline, PipelineConfig, closing_table, load_pipeline_config

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "device": "cpu",
    "sam": {"engine": "sam_tiny", "checkpoint": "none", "precision": "fp32"},
    "proposals": {"prompts": "point,point_box", "save_embeddings": True},
    "select": {"method": "sapnet", "backbone": "resnet18", "backbone_weights": "none", "epochs": 1,
               "batch_size": 2, "min_size": 160, "max_size": 224, "warmup_iters": 2, "workers": 0},
    "refine": {"iters": 1},
    "train": {"backbone": "resnet18", "backbone_weights": "none", "iters": 3, "batch": 2, "min_size": "160",
              "max_size": 224, "warmup_iters": 1, "workers": 0, "checkpoint_period": 2,
              "model": {"head_channels": 32, "head_convs": 1, "fpn_channels": 32, "mask_channels": 16,
                        "kernel_dim": 16}},
    "viz": {"limit": 2, "sheet": 2},
}


@pytest.fixture(scope="module")
def gt_file(coco_gt, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "gt.json"
    path.write_text(json.dumps(subset_coco(coco_gt, 3, max_anns=2)))
    return path


def _cfg(gt_file, coco_dir, out, **over):
    cfg = PipelineConfig(images=str(coco_dir / "images"), out=str(out), gt=str(gt_file),
                         **{k: json.loads(json.dumps(v)) for k, v in TINY.items()})
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_pipeline_runs_skips_reruns_changed_stages_and_respects_from_until(gt_file, coco_dir, tmp_path):
    run = tmp_path / "run"
    records = Pipeline(_cfg(gt_file, coco_dir, run)).run_stages()
    assert [r.stage for r in records] == list(STAGES) and all(r.status == "ran" for r in records)
    by = {r.stage: r for r in records}
    pseudo = json.loads(Path(by["select"].outputs["pseudo"]).read_text())
    gt = json.loads(gt_file.read_text())
    assert sorted(a["id"] for a in pseudo["annotations"]) == sorted(a["id"] for a in gt["annotations"])
    assert Path(by["train"].outputs["weights"]).is_file()
    assert "mask_ap" in by["eval"].metrics and 0.0 <= by["eval"].metrics["mask_ap"]["AP"] <= 100.0
    for name in ("sam-top1", "selected", "refined"):
        assert by["eval"].metrics["pseudo_labels"][name]["count"] == len(gt["annotations"])
    pngs = sorted((run / "7_viz" / "overlays").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size[0] > 0
    table = closing_table(records)
    assert all(s in table for s in STAGES) and "mask AP" in table

    again = Pipeline(_cfg(gt_file, coco_dir, run)).run_stages()
    assert all(r.status == "skipped" for r in again)

    cfg = _cfg(gt_file, coco_dir, run)
    cfg.train["iters"] = 4  # only train and what follows it are redone
    changed = {r.stage: r.status for r in Pipeline(cfg).run_stages()}
    assert [s for s in STAGES if changed[s] == "ran"] == ["train", "eval", "viz"]

    only = Pipeline(cfg).run_stages("eval", "eval")
    assert [(r.stage, r.status) for r in only] == [("eval", "skipped")]
    with pytest.raises(InputError, match="has not run yet"):
        Pipeline(_cfg(gt_file, coco_dir, tmp_path / "fresh")).run_stages("select", "select")
    with pytest.raises(InputError, match="unknown stage"):
        Pipeline(cfg).run_stages("nope")


def test_config_file_sets_and_flags_flow_one_way(tmp_path):
    (tmp_path / "p.yaml").write_text("images: imgs\ngt: gt.json\ntrain:\n  iters: 5\nsam:\n  model: vit_b\n")
    cfg = load_pipeline_config(tmp_path / "p.yaml", ["train.iters=7", "select.method=mil"], model="tiny", out="o")
    # the deprecated SAM type (file, then flag) becomes the one engine name every stage reads
    assert cfg.train["iters"] == 7 and cfg.select["method"] == "mil" and cfg.sam["engine"] == "sam_tiny"
    assert "model" not in cfg.sam
    assert load_pipeline_config(tmp_path / "p.yaml").sam["engine"] == "sam_vit_b"
    assert load_pipeline_config(tmp_path / "p.yaml", engine="sam2.1_hiera_b+").sam["engine"] == "sam2.1_hiera_b+"
    (tmp_path / "q.yaml").write_text("images: imgs\ngt: gt.json\n")
    assert load_pipeline_config(tmp_path / "q.yaml").sam["engine"] == "sam_vit_h"
    assert load_pipeline_config(tmp_path / "q.yaml", engine="hq_vit_b").sam["engine"] == "hq_vit_b"
    assert cfg.out == "o" and cfg.images == "imgs"
    with pytest.raises(InputError, match="unknown pipeline option"):
        (tmp_path / "bad.yaml").write_text("imagez: x\n")
        load_pipeline_config(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="point file"):
        load_pipeline_config(None, images="x")


def test_the_device_is_the_runs_and_the_old_sam_device_still_reads(tmp_path):
    (tmp_path / "old.yaml").write_text("images: imgs\ngt: gt.json\nsam:\n  engine: sam_tiny\n  device: cpu\n")
    old = load_pipeline_config(tmp_path / "old.yaml")
    assert old.device == "cpu" and "device" not in old.sam
    assert load_pipeline_config(tmp_path / "old.yaml", device="cuda:1").device == "cuda:1"  # the flag wins
    assert load_pipeline_config(tmp_path / "old.yaml", ["device=meta"]).device == "meta"
    # the SAM stages get the device with the sam section, hashed as before it moved: old run folders resume
    new = PipelineConfig(images="imgs", gt="gt.json", device="cpu", sam={"engine": "sam_tiny"})
    before = PipelineConfig(images="imgs", gt="gt.json", sam={"engine": "sam_tiny", "device": "cpu"})
    expected = {"engine": "sam_tiny", "device": "cpu"}
    assert Pipeline(new).engine_options() == Pipeline(before).engine_options() == expected
    assert Pipeline(old).engine_options()["device"] == "cpu"


def test_a_pipeline_killed_in_a_stage_resumes_it(gt_file, coco_dir, tmp_path):
    import yaml

    run = tmp_path / "run"
    cfg = {"images": str(coco_dir / "images"), "gt": str(gt_file), "out": str(run), **TINY}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    args = [sys.executable, str(REPO / "cli.py"), "pipeline", "--config", str(tmp_path / "p.yaml"),
            "--until", "proposals"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = run / "2_proposals" / "cache" / "shard-00000-of-00001.sqlite"
    deadline, done = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None and done < 1:
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                    done = c.execute("SELECT count(*) FROM images").fetchone()[0]
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= done < 3 and not (run / "2_proposals" / "stage.json").exists()
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "already cached" in r.stderr or json.loads((run / "2_proposals" / "stage.json").read_text())
    marker = json.loads((run / "2_proposals" / "stage.json").read_text())
    assert marker["metrics"]["points"] == len(json.loads(gt_file.read_text())["annotations"])


def test_demo_dataset_is_exact_and_repeatable(tmp_path):
    from pseudolabel.pipeline.demo import make_demo_dataset
    from pseudolabel.core.rle import decode_rle

    a_json, a_dir = make_demo_dataset(tmp_path / "a", n_images=3)
    b_json, _ = make_demo_dataset(tmp_path / "b", n_images=3)
    a, b = json.loads(a_json.read_text()), json.loads(b_json.read_text())
    assert a == b and len(a["images"]) == 3 and len(a["annotations"]) >= 3
    for im in a["images"]:
        masks = [decode_rle(x["segmentation"]) for x in a["annotations"] if x["image_id"] == im["id"]]
        assert np.max(np.sum(masks, axis=0)) == 1  # visible parts never overlap
        assert Image.open(a_dir / im["file_name"]).size == (im["width"], im["height"])


@pytest.mark.parametrize("name", ["coco", "custom"])
def test_shipped_example_configs_name_real_options(name):
    from pseudolabel.core.config import resolve
    from pseudolabel.proposals.run import ProposalConfig
    from pseudolabel.selector.options import SelectConfig
    from refine.refiner import RefineConfig
    from segtrain import TrainConfig

    cfg = load_pipeline_config(name)
    ProposalConfig(**{**cfg.sam, **cfg.proposals})
    resolve(SelectConfig(), cfg.select)
    RefineConfig(**{k: v for k, v in cfg.refine.items() if k != "enabled"})
    TrainConfig(**cfg.train)
    with pytest.raises(InputError, match="shipped example"):
        load_pipeline_config("no_such_config")


def test_the_full_demo_configuration_names_real_options(tmp_path):
    """`sap demo` without --quick: its settings resolve in every stage (the run itself is the
    quick one below, through the same code)."""
    from pseudolabel.core.config import resolve
    from pseudolabel.pipeline.demo import DEMO_IMAGES, demo_config
    from pseudolabel.proposals.run import ProposalConfig
    from pseudolabel.selector.options import SelectConfig
    from pseudolabel.selector.select import check_select_options
    from pseudolabel.selector.train import warmup_advice
    from refine.refiner import RefineConfig
    from segtrain import TrainConfig
    from segtrain.config import check_config

    for quick in (False, True):
        cfg = demo_config(tmp_path, tmp_path / "a.json", tmp_path, "sam_tiny", "none", None, False, quick=quick)
        ProposalConfig(**{**cfg.sam, **cfg.proposals})
        check_select_options(resolve(SelectConfig(), cfg.select))
        RefineConfig(**{k: v for k, v in cfg.refine.items() if k != "enabled"})
        check_config(TrainConfig(**cfg.train, out=str(tmp_path / "t")))
        assert cfg.train["iters"] == (6 if quick else 60) and cfg.select["epochs"] == (1 if quick else 12)
        # its warmup fits its run (batch 2, every image a sample): no warning about the demo's own schedule
        iterations = cfg.select["epochs"] * -(-(4 if quick else DEMO_IMAGES) // cfg.select["batch_size"])
        assert warmup_advice(resolve(SelectConfig(), cfg.select), iterations) is None


def test_sap_demo_runs_offline_end_to_end_with_the_pocket_sam_banner(tmp_path):
    """The README's first command: the whole pipeline on the shapes dataset, without internet
    (``--quick``: the same stages with a token amount of work), on the pocket SAM (the
    random-weights fallback: tests/test_pocket.py)."""
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "demo", "--offline", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "a pocket SAM trained on synthetic shapes" in r.stderr and "RANDOM WEIGHTS" not in r.stderr
    # both backbones start from the bundled pocket weights: no warning about the demo's own settings
    assert "RANDOM weights" not in r.stderr and "consider --lr" not in r.stderr
    assert "warmup" not in r.stderr and "no checkpoint" not in r.stderr  # a fresh run resumes nothing
    assert "pseudo-mask mIoU against the ground truth: sam-top1 " in r.stdout and " | sapnet " in r.stdout
    for stage in STAGES:
        assert stage in r.stdout
    report = (tmp_path / "run" / "report.md").read_text()
    assert "a pocket SAM trained on synthetic shapes" in report and "mask AP" in report and "sam-top1" in report
    assert any("sam_pocket" in p.read_text() for p in (tmp_path / "run").rglob("*.yaml"))
    overlays = sorted((tmp_path / "run" / "7_viz" / "overlays").glob("*.png"))
    assert len(overlays) == 4
    img = Image.open(overlays[0])
    assert img.size == (320, 240)
    again = subprocess.run([sys.executable, str(REPO / "cli.py"), "demo", "--offline", "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("skipped") >= len(STAGES)


def test_pipeline_from_a_cvat_export_runs_end_to_end(coco_gt, coco_dir, tmp_path):
    """`sap pipeline --from cvat`: the XML's multi-point elements become objects whose every click
    reaches SAM; every stage runs on the point file read from the export."""
    import yaml

    from pseudolabel.core.cache import CacheReader
    from pseudolabel.core.points import derive_points

    pts, _ = derive_points(subset_coco(coco_gt, 2, max_anns=2), "center")
    names = {c["id"]: c["name"] for c in pts["categories"]}
    body = []
    for im in pts["images"]:
        shapes = []
        for a in (a for a in pts["annotations"] if a["image_id"] == im["id"]):
            x, y = a["point"]
            shapes.append(f'<points label="{names[a["category_id"]]}" source="manual" occluded="0" '
                          f'points="{x:.2f},{y:.2f};{x + 1:.2f},{y:.2f}" z_order="0"></points>')
        body.append(f'<image id="{im["id"]}" name="images/{im["file_name"]}" width="{im["width"]}" '
                    f'height="{im["height"]}">{"".join(shapes)}</image>')
    labels = "".join(f"<label><name>{n}</name></label>" for n in sorted(set(names.values())))
    xml = tmp_path / "annotations.xml"
    xml.write_text(f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task>'
                   f'<labels>{labels}</labels></task></meta>{"".join(body)}</annotations>')
    cfg = {k: json.loads(json.dumps(v)) for k, v in TINY.items()}
    cfg["train"]["iters"] = 1
    cfg["select"] = {"method": "sam-top1"}  # SAPNet's training is tested above; here: the export's path
    cfg["sam"] = {"engine": "sam_pocket", "checkpoint": None, "precision": "fp32"}  # fast
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "pipeline", "--from", "cvat", "--points", str(xml),
                        "--images", str(coco_dir / "images"), "--out", str(run), "--config", str(tmp_path / "tiny.yaml")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    marker = json.loads((run / "1_points" / "stage.json").read_text())
    assert marker["metrics"]["objects"] == len(pts["annotations"]) and marker["metrics"]["clicks"] == 2 * len(pts["annotations"])
    with CacheReader(run / "2_proposals" / "cache") as reader:
        assert set(reader.clicks().values()) == {2}
    assert (run / "4_refine" / "refined.json").is_file() and (run / "5_train" / "model_final.pth").is_file()
