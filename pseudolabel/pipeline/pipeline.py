"""`sap pipeline`: points → proposals → select → refine → train → eval → viz in one run folder.

Each stage writes into its own subfolder and, when it completes, a ``stage.json`` holding a
digest of everything that shapes its result (its settings, its inputs' digests), its outputs,
its key numbers and its time. A rerun skips a stage whose ``stage.json`` digest is unchanged and
whose outputs exist; a stage killed midway resumes through the stage's own resume (the proposal
cache, refine's partial file, the trainer's last checkpoint). Corrections that `sap import`
wrote to ``RUN/corrections.json`` are laid over the selection before refining (refine passes
these locked annotations through untouched); their digest joins refine's, so a rerun after an
import redoes refine and everything after it, and keeps every correction.

This module is orchestration (layer 4): it calls the stage packages, which know nothing of it.
Options: :mod:`.config`; closing table and report: :mod:`.report`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pseudolabel.core.alternatives import rebase as rebase_alternatives
from pseudolabel.core.backbones import BUNDLED
from pseudolabel.core.bag_sources import load_bags
from pseudolabel.core.cocoeval import coco_mask_ap
from pseudolabel.core.coco import load_coco_json, with_locked
from pseudolabel.core.config import EngineOptions, resolve, to_jsonable, versions
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import file_sha256
from pseudolabel.core.io import check_not_input, check_output_dir, check_torch_file, write_json_atomic, write_text_atomic
from pseudolabel.core.lock import output_lock
from pseudolabel.core.points import collect_points, derive_points
from pseudolabel.core.progress import logger
from pseudolabel.evaluate import compare, evaluate_pseudo, format_table, load_pseudo_file
from pseudolabel.proposals import ProposalConfig, cache_overview, run_proposals
from pseudolabel.selector import SelectConfig, run_select
from pseudolabel.selector.train import CHECKPOINT_NAME as SELECTOR_CHECKPOINT
from pseudolabel.viz import render_disagreement_sheet, render_overlays, render_side_by_side
from refine import RefineConfig, run_refine
from segtrain import TrainConfig, predict, run_train

from .config import PipelineConfig

STAGES = ("points", "proposals", "select", "refine", "train", "eval", "viz")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None

    return file_sha256(path)


@dataclass
class StageRecord:
    """What a finished stage left in its ``stage.json``."""

    stage: str
    digest: str
    outputs: dict[str, str]
    metrics: dict[str, Any]
    seconds: float
    status: str = "ran"


class Pipeline:
    """Runs the stages of a :class:`PipelineConfig` in order; see the module docstring."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.run = Path(cfg.out)
        self.records: dict[str, StageRecord] = {}
        self._digests: dict[str, str | None] = {}  # content digests of the images and the SAM checkpoint

    # ---- bookkeeping -------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.run / f"{STAGES.index(stage) + 1}_{stage}"

    def corrections(self) -> Path | None:
        """``RUN/corrections.json`` (written by `sap import`) if there is one."""
        path = self.run / "corrections.json"
        return path if path.is_file() else None

    def _marker(self, stage: str) -> Path:
        return self.stage_dir(stage) / "stage.json"

    def _previous(self, stage: str) -> StageRecord | None:
        path = self._marker(stage)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return StageRecord(**{k: data[k] for k in ("stage", "digest", "outputs", "metrics", "seconds")})
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def engine_options(self) -> dict[str, Any]:
        """The engine options of the SAM stages: the ``sam`` section and the run's ``device`` (the
        stage digests hash them as one ``sam`` mapping, as before ``device`` moved up)."""
        return {**self.cfg.sam, "device": self.cfg.device}

    def output(self, stage: str, key: str) -> str:
        rec = self.records.get(stage) or self._previous(stage)
        if rec is None or key not in rec.outputs:
            raise InputError(f"stage {stage!r} has not run yet in {self.run}; run it first (drop --from)")
        return rec.outputs[key]

    def stage_inputs(self, stage: str, resumable: bool = False) -> dict[str, Any]:
        """Everything that shapes ``stage``'s result (hashed into its digest). ``resumable``: less
        what the stage's own resume checks by content (the image files, for the proposal cache),
        so a changed image keeps the stage's folder and only that image is recomputed."""
        c = self.cfg
        upstream = {s: (self.records.get(s) or self._previous(s) or StageRecord(s, "", {}, {}, 0)).digest
                    for s in STAGES[:STAGES.index(stage)]}
        own = {"points": {"points": _file_digest(c.points) if c.points and Path(c.points).is_file() else c.points,
                          "gt": _file_digest(c.gt) if not c.points else None, "mode": c.point_mode,
                          "seed": c.point_seed, "from": c.points_from, "options": c.points_options},
               "proposals": {"sam": self.engine_options(), "checkpoint": self._checkpoint_digest(),
                             "proposals": c.proposals,
                             "images": c.images, "image_files": self._images_digest()},
               "select": {"select": c.select, "gt": _file_digest(c.gt)},
               "refine": {"refine": c.refine, "sam": self.engine_options(), "checkpoint": self._checkpoint_digest(),
                          # + corrections, once `sap import` wrote some
                          **({"corrections": _file_digest(self.corrections())} if self.corrections() else {})},
               "train": {"train": c.train, "val": c.val, "val_images": c.val_images},
               "eval": {"gt": _file_digest(c.gt), "val": _file_digest(c.val)},
               "viz": {"viz": c.viz}}[stage]
        if resumable:
            own = {k: v for k, v in own.items() if k != "image_files"}
        return {"own": own, "upstream": upstream}

    def check(self) -> None:
        """Before any stage runs: every stage's options and the input files, so that bad input
        stops the pipeline with one sentence and an untouched run folder.

        Raises:
            InputError: the first unusable option or input.
        """
        from pseudolabel.core.coco import check_categories, check_segmentations
        from pseudolabel.selector.select import check_select_options
        from segtrain.config import check_config

        c = self.cfg
        if not Path(c.images).is_dir():
            raise InputError(f"image folder {c.images} does not exist")
        try:
            ProposalConfig(**{**self.engine_options(), **c.proposals})
            check_select_options(resolve(SelectConfig(), c.select))
            RefineConfig(**{**EngineOptions.pick(self.engine_options()),
                            **{k: v for k, v in c.refine.items() if k != "enabled"}})
            check_config(TrainConfig(**{**c.train, "out": str(self.stage_dir("train"))}))
        except TypeError as e:
            raise InputError(f"the pipeline configuration names an unknown option ({e})") from None
        ckpt = c.sam.get("checkpoint")
        if ckpt and str(ckpt).lower() != "none":
            check_torch_file(ckpt, "SAM checkpoint")
        for key in ("backbone_weights",):
            for section in (c.select, c.train):
                value = section.get(key)
                if value and str(value).lower() not in ("imagenet", "none", *BUNDLED):
                    check_torch_file(value, "backbone weights")
        for path in (c.gt, c.val):
            if path:
                coco = load_coco_json(path)
                check_categories(coco, str(path))
                check_segmentations(coco, str(path))
        if c.points:
            _read_points(c)

    def _checkpoint_digest(self) -> str | None:
        """sha256 of the SAM checkpoint file the settings name (None: download or random weights)."""
        ckpt = self.cfg.sam.get("checkpoint")
        if "checkpoint" not in self._digests:
            self._digests["checkpoint"] = _file_digest(ckpt) if ckpt and Path(ckpt).is_file() else None
        return self._digests["checkpoint"]

    def _images_digest(self) -> str | None:
        """Digest of the content of every image the point (or ground-truth) file names, so a
        changed image reruns the proposal stage (whose cache recomputes just that image). File hashes
        are remembered in ``image_hashes.json`` by (size, mtime), so a rerun reads no image twice."""
        if "images" in self._digests:  # once per run: stage_inputs asks for it for every stage
            return self._digests["images"]
        source = self.cfg.points or self.cfg.gt
        if self.cfg.points_from:  # an export: the images its point file names
            source = self.stage_dir("points") / "points.json"
        if not source or not Path(source).is_file() or not self.cfg.images:
            return None
        memo_path = self.run / "image_hashes.json"
        try:
            memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            memo = {}
        names = sorted({str(im.get("file_name")) for im in load_coco_json(source)["images"]})
        hashes, fresh = {}, {}
        for name in names:
            path = Path(self.cfg.images) / name
            try:
                st = path.stat()
            except OSError:
                hashes[name] = None
                continue
            key = f"{st.st_size}:{st.st_mtime_ns}"
            if memo.get(name, {}).get("key") != key:
                memo[name] = {"key": key, "sha256": file_sha256(path)}
                fresh[name] = True
            hashes[name] = memo[name]["sha256"]
        if fresh and self.run.is_dir():
            write_json_atomic(memo_path, memo)
        self._digests["images"] = _digest(hashes)
        return self._digests["images"]

    def _prepare(self, stage: str, digest: str) -> None:
        """Give the stage its folder: kept when an interrupted run of the same settings left it
        (the stage resumes), emptied when it holds the work of other settings."""
        d = self.stage_dir(stage)
        started = d / "started.json"
        if d.exists():
            try:
                same = json.loads(started.read_text()).get("digest") == digest
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            write_json_atomic(started, {"digest": digest})

    # ---- running -----------------------------------------------------------------------------
    def run_stages(self, start: str | None = None, until: str | None = None) -> list[StageRecord]:
        """Run ``start``..``until`` (inclusive), skipping stages already complete and unchanged."""
        for name in (start, until):
            if name is not None and name not in STAGES:
                raise InputError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        i0 = STAGES.index(start) if start else 0
        i1 = STAGES.index(until) if until else len(STAGES) - 1
        if i0 > i1:
            raise InputError(f"--from {start} comes after --until {until}")
        c = self.cfg
        check_output_dir(self.run, "the run folder", inputs=(c.images, c.val_images))
        check_not_input(self.run, "the run folder", (c.points, c.gt, c.val))
        self.check()
        with output_lock(self.run):
            return self._run_locked(i0, i1)

    def _run_locked(self, i0: int, i1: int) -> list[StageRecord]:
        """Stages ``i0..i1`` of :data:`STAGES`, holding the run folder's lock."""
        self.run.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run / "pipeline.yaml", _yaml({"config": to_jsonable(self.cfg), "versions": versions()}))
        done = []
        for stage in STAGES[i0:i1 + 1]:
            digest = _digest(self.stage_inputs(stage))
            prev = self._previous(stage)
            if prev and prev.digest == digest and all(Path(p).exists() for p in prev.outputs.values()):
                prev.status = "skipped"
                self.records[stage] = prev
                logger.info("stage %s: unchanged and complete, skipped", stage)
                done.append(prev)
                continue
            logger.info("stage %s ...", stage)
            self._prepare(stage, _digest(self.stage_inputs(stage, resumable=True)))
            t0 = time.perf_counter()
            outputs, metrics = STAGE_FUNCTIONS[stage](self)
            rec = StageRecord(stage, digest, {k: str(v) for k, v in outputs.items()}, to_jsonable(metrics),
                              round(time.perf_counter() - t0, 2))
            write_json_atomic(self._marker(stage), {**rec.__dict__, "versions": versions(),
                                                    "inputs": to_jsonable(self.stage_inputs(stage))}, indent=2)
            self.records[stage] = rec
            done.append(rec)
        write_json_atomic(self.run / "summary.json", {s: r.__dict__ for s, r in self.records.items()}, indent=2)
        return done


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


# ---- the stages ----------------------------------------------------------------------------------

def _read_points(c: PipelineConfig) -> tuple[dict, dict]:
    """The point file ``c.points`` (read from a labelling tool's export with ``c.points_from``), checked."""
    if c.points_from:
        from pseudolabel.ingest import IngestOptions, read_points

        try:
            options = IngestOptions(**c.points_options)
        except TypeError:
            raise InputError(f"points_options takes {', '.join(IngestOptions.__dataclass_fields__)}, "
                             f"not {', '.join(c.points_options)}") from None
        return read_points(c.points_from, c.points, c.images, options)
    coco = load_coco_json(c.points)
    _, report = collect_points(coco, source=str(c.points))
    return coco, {"points": report.points}


def _points(p: Pipeline) -> tuple[dict, dict]:
    if p.cfg.points_from:
        pts, counts = _read_points(p.cfg)
        return {"points": write_json_atomic(p.stage_dir("points") / "points.json", pts)}, counts
    if p.cfg.points:
        _, counts = _read_points(p.cfg)
        return {"points": p.cfg.points}, counts

    pts, counts = derive_points(load_coco_json(p.cfg.gt), p.cfg.point_mode, p.cfg.point_seed, source=p.cfg.gt)
    out = write_json_atomic(p.stage_dir("points") / "points.json", pts)
    return {"points": out}, counts


def _proposals(p: Pipeline) -> tuple[dict, dict]:
    cfg = ProposalConfig(**{**p.engine_options(), **p.cfg.proposals})
    cache = p.stage_dir("proposals") / "cache"
    summary = run_proposals(p.output("points", "points"), p.cfg.images, cache, cfg)
    ov = cache_overview(cache)
    return {"cache": cache}, {"proposals": ov["proposals"], "points": ov["points"],
                              "failed_images": len(ov["images_failed"]), "images_computed": summary.done,
                              "images_changed": len(summary.changed),
                              "encoder_s_per_image": summary.encoder_s / max(summary.done, 1)}


def _pseudo_miou(p: Pipeline, path: str | Path) -> dict[str, Any]:
    if not p.cfg.gt:
        return {}
    m = evaluate_pseudo(load_coco_json(p.cfg.gt), load_pseudo_file(path))["overall"]
    return {"mask_miou": m["mask_miou"], "box_miou": m["box_miou"], "boundary_miou": m.get("boundary_miou"),
            "iou50": m["iou50"]}


def _select(p: Pipeline) -> tuple[dict, dict]:
    d = p.stage_dir("select")
    points, cache = p.output("points", "points"), p.output("proposals", "cache")
    # a stage killed midway continues from its last epoch; a fresh one starts without a word
    cfg = resolve(SelectConfig(), p.cfg.select, device=p.cfg.device, work_dir=str(d / "work"),
                  resume=(d / "work" / SELECTOR_CHECKPOINT).is_file())
    summary = run_select(points, cache, d / "pseudo.json", cfg, images=p.cfg.images)
    metrics: dict[str, Any] = {"pseudo_masks": summary.written, "method": cfg.method}
    outputs = {"pseudo": d / "pseudo.json"}
    if p.cfg.gt:
        metrics[cfg.method] = _pseudo_miou(p, d / "pseudo.json")
        if cfg.method != "sam-top1":  # the baseline costs nothing: measure it beside
            base = run_select(points, cache, d / "sam_top1.json", resolve(SelectConfig(), method="sam-top1"))
            outputs["sam_top1"] = base.out
            metrics["sam-top1"] = _pseudo_miou(p, d / "sam_top1.json")
    return outputs, metrics


def _refine(p: Pipeline) -> tuple[dict, dict]:
    pseudo = p.output("select", "pseudo")
    corrections = p.corrections()
    if corrections is not None:  # a person's corrections replace the selection; refine keeps them
        locked = load_coco_json(corrections)["annotations"]
        merged, target = with_locked(load_coco_json(pseudo), locked), p.stage_dir("refine") / "input_with_corrections.json"
        if isinstance(merged.get("info"), dict):  # the selector's alternatives stay where they are
            merged["info"] = rebase_alternatives(merged["info"], pseudo, target)
        pseudo = write_json_atomic(target, merged)
    opts = dict(p.cfg.refine)
    if not opts.pop("enabled", True):
        return {"labels": pseudo}, {"refined": 0, "note": "refinement disabled"}

    sam = EngineOptions.pick(p.engine_options())  # "model", the engine's deprecated spelling, included
    cfg = RefineConfig(**{**sam, "embeddings": p.output("proposals", "cache"), **opts})
    out = p.stage_dir("refine") / "refined.json"
    summary = run_refine(pseudo, p.cfg.images, out, cfg)
    metrics: dict[str, Any] = {"refined": summary.refined, "failed_images": len(summary.failed)}
    if p.cfg.gt:
        metrics["refined_miou"] = _pseudo_miou(p, out)
    return {"labels": out}, metrics


def _train(p: Pipeline) -> tuple[dict, dict]:
    d = p.stage_dir("train")
    val = p.cfg.val or p.cfg.gt
    opts = {"device": p.cfg.device, **p.cfg.train}
    cfg = TrainConfig(train=p.output("refine", "labels"), images=p.cfg.images, out=str(d), val=val,
                      val_images=p.cfg.val_images or (p.cfg.images if val else None), **opts)
    summary = run_train(cfg, resume=True)
    metrics = {"iters": summary.iters, "first_loss": summary.first_loss, "last_loss": summary.last_loss,
               "final_eval": summary.final_eval} if summary else {}
    return {"weights": d / "model_final.pth"}, metrics


def _eval(p: Pipeline) -> tuple[dict, dict]:
    d = p.stage_dir("eval")
    val = p.cfg.val or p.cfg.gt
    metrics: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    if val:
        pred = d / "predictions.json"
        predict(p.output("train", "weights"), p.cfg.val_images or p.cfg.images, pred, ann=val,
                device=p.cfg.device)
        metrics["mask_ap"] = coco_mask_ap(val, json.loads(pred.read_text()))
        outputs["predictions"] = pred
    if p.cfg.gt:
        gt = load_coco_json(p.cfg.gt)
        files = {"sam-top1": (p.records.get("select") or p._previous("select")).outputs.get("sam_top1"),
                 "selected": p.output("select", "pseudo"), "refined": p.output("refine", "labels")}
        results = {name: evaluate_pseudo(gt, load_pseudo_file(f)) for name, f in files.items() if f}
        table = format_table(compare(results))
        write_text_atomic(d / "pseudo_labels.txt", table + "\n")
        metrics["pseudo_labels"] = {k: v["overall"] for k, v in results.items()}
        outputs["pseudo_table"] = d / "pseudo_labels.txt"
    write_json_atomic(d / "metrics.json", to_jsonable(metrics), indent=2)
    outputs["metrics"] = d / "metrics.json"
    return outputs, metrics


def _viz(p: Pipeline) -> tuple[dict, dict]:
    d = p.stage_dir("viz")
    limit = int(p.cfg.viz.get("limit", 8))
    refined = load_coco_json(p.output("refine", "labels"))
    selected = load_coco_json(p.output("select", "pseudo"))
    gt = load_coco_json(p.cfg.gt) if p.cfg.gt else None
    render_overlays(refined, p.cfg.images, d / "overlays", limit=limit)
    render_side_by_side(p.cfg.images, d / "compare", bags=load_bags(p.output("proposals", "cache")),
                        selected=selected, refined=refined, gt=gt, limit=limit)
    outputs = {"overlays": d / "overlays", "compare": d / "compare"}
    other, name = (gt, "ground truth") if gt else (selected, "selected")
    render_disagreement_sheet(refined, other, p.cfg.images, d / "disagreement.png",
                              n=int(p.cfg.viz.get("sheet", 8)), names=("refined", name))
    outputs["sheet"] = d / "disagreement.png"
    return outputs, {"images": limit}


STAGE_FUNCTIONS: dict[str, Callable[[Pipeline], tuple[dict, dict]]] = {
    "points": _points, "proposals": _proposals, "select": _select, "refine": _refine,
    "train": _train, "eval": _eval, "viz": _viz,
}


