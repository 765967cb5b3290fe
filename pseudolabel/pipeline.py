"""`sap pipeline`: points → proposals → select → refine → train → eval → viz in one run folder.

Each stage writes into its own subfolder and, when it completes, a ``stage.json`` holding a
digest of everything that shapes its result (its settings, its inputs' digests), its outputs,
its key numbers and its time. A rerun skips a stage whose ``stage.json`` digest is unchanged and
whose outputs exist; a stage killed midway resumes through the stage's own resume (the proposal
cache, refine's partial file, the trainer's last checkpoint).

This module orchestrates the other packages (it imports `refine` and `segtrain` inside the
stage functions); the stages themselves know nothing of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .config import load_config_file, to_jsonable, versions
from .errors import InputError
from .io import write_json_atomic, write_text_atomic
from .progress import logger

STAGES = ("points", "proposals", "select", "refine", "train", "eval", "viz")


@dataclass
class PipelineConfig:
    """Options of the pipeline. The stage sections hold overrides of each stage's own options."""

    images: str = ""
    out: str = "sap_runs/pipeline"
    points: str | None = None  # point file; derived from `gt` when absent
    gt: str | None = None  # full masks: derive points, measure pseudo-labels, default validation
    point_mode: str = "center"
    point_seed: int = 0
    val: str | None = None  # validation COCO JSON for the trained model (default: gt)
    val_images: str | None = None
    sam: dict[str, Any] = field(default_factory=lambda: {"model": "vit_h", "checkpoint": None,
                                                          "precision": "auto", "device": None})
    proposals: dict[str, Any] = field(default_factory=lambda: {"prompts": "point,point_box",
                                                                "save_embeddings": True})
    select: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=lambda: {"enabled": True})
    train: dict[str, Any] = field(default_factory=dict)
    viz: dict[str, Any] = field(default_factory=lambda: {"limit": 8, "sheet": 8})


SECTIONS = ("sam", "proposals", "select", "refine", "train", "viz")


EXAMPLE_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_name(path: str | Path | None) -> Path | None:
    """A config file path, or the name of a shipped example (``coco``, ``custom``)."""
    if path is None or Path(path).exists():
        return Path(path) if path is not None else None
    shipped = EXAMPLE_CONFIGS / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in sorted(EXAMPLE_CONFIGS.glob("*.yaml")))
    raise InputError(f"configuration {path} is neither a file nor a shipped example ({names})")


def load_pipeline_config(path: str | Path | None, sets: list[str] | None = None, **flags: Any) -> PipelineConfig:
    """Defaults → YAML file → ``--set section.key=value`` → flags (``None`` = not given)."""
    cfg = PipelineConfig()
    data = load_config_file(resolve_config_name(path))
    names = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown pipeline option(s): {', '.join(unknown)}")
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"pipeline option {key!r} must be a mapping")
            getattr(cfg, key).update(value)
        else:
            setattr(cfg, key, value)
    import yaml

    for item in sets or []:
        if "=" not in item:
            raise InputError(f"--set takes section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise InputError(f"--set {key}: unknown section {section!r} ({', '.join(SECTIONS)})")
            getattr(cfg, section)[sub] = value
        elif key in names and key not in SECTIONS:
            setattr(cfg, key, value)
        else:
            raise InputError(f"--set {key}: unknown option")
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("model", "checkpoint", "precision", "device"):
            cfg.sam[key] = value
        else:
            setattr(cfg, key, value)
    if not cfg.images:
        raise InputError("the pipeline needs an image folder (--images or 'images:' in the config)")
    if not cfg.points and not cfg.gt:
        raise InputError("the pipeline needs a point file (--points) or full masks to derive points from (--gt)")
    return cfg


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    from .images import file_sha256

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

    # ---- bookkeeping -------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.run / f"{STAGES.index(stage) + 1}_{stage}"

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

    def output(self, stage: str, key: str) -> str:
        rec = self.records.get(stage) or self._previous(stage)
        if rec is None or key not in rec.outputs:
            raise InputError(f"stage {stage!r} has not run yet in {self.run}; run it first (drop --from)")
        return rec.outputs[key]

    def stage_inputs(self, stage: str) -> dict[str, Any]:
        """Everything that shapes ``stage``'s result (hashed into its digest)."""
        c = self.cfg
        upstream = {s: (self.records.get(s) or self._previous(s) or StageRecord(s, "", {}, {}, 0)).digest
                    for s in STAGES[:STAGES.index(stage)]}
        own = {"points": {"points": _file_digest(c.points), "gt": _file_digest(c.gt) if not c.points else None,
                          "mode": c.point_mode, "seed": c.point_seed},
               "proposals": {"sam": c.sam, "proposals": c.proposals, "images": c.images},
               "select": {"select": c.select, "gt": _file_digest(c.gt)},
               "refine": {"refine": c.refine, "sam": c.sam},
               "train": {"train": c.train, "val": c.val, "val_images": c.val_images},
               "eval": {"gt": _file_digest(c.gt), "val": _file_digest(c.val)},
               "viz": {"viz": c.viz}}[stage]
        return {"own": own, "upstream": upstream}

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
                import shutil

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
            self._prepare(stage, digest)
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
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


# ---- the stages ----------------------------------------------------------------------------------

def _points(p: Pipeline) -> tuple[dict, dict]:
    if p.cfg.points:
        from .coco import load_coco_json
        from .points import collect_points

        _, report = collect_points(load_coco_json(p.cfg.points), source=p.cfg.points)
        return {"points": p.cfg.points}, {"points": report.points}
    from .coco import load_coco_json
    from .points import derive_points

    pts, counts = derive_points(load_coco_json(p.cfg.gt), p.cfg.point_mode, p.cfg.point_seed)
    out = write_json_atomic(p.stage_dir("points") / "points.json", pts)
    return {"points": out}, counts


def _proposals(p: Pipeline) -> tuple[dict, dict]:
    from .proposals import ProposalConfig, run_proposals

    cfg = ProposalConfig(**{**p.cfg.sam, **p.cfg.proposals})
    cache = p.stage_dir("proposals") / "cache"
    summary = run_proposals(p.output("points", "points"), p.cfg.images, cache, cfg)
    from .proposals import cache_overview

    ov = cache_overview(cache)
    return {"cache": cache}, {"proposals": ov["proposals"], "points": ov["points"],
                              "failed_images": len(ov["images_failed"]),
                              "encoder_s_per_image": summary.encoder_s / max(summary.done, 1)}


def _pseudo_miou(p: Pipeline, path: str | Path) -> dict[str, Any]:
    if not p.cfg.gt:
        return {}
    from .evaluate import evaluate_pseudo, load_pseudo_file
    from .coco import load_coco_json

    m = evaluate_pseudo(load_coco_json(p.cfg.gt), load_pseudo_file(path))["overall"]
    return {"mask_miou": m["mask_miou"], "box_miou": m["box_miou"], "boundary_miou": m.get("boundary_miou"),
            "iou50": m["iou50"]}


def _select(p: Pipeline) -> tuple[dict, dict]:
    from .config import resolve
    from .selector.options import SelectConfig
    from .selector.select import run_select

    d = p.stage_dir("select")
    points, cache = p.output("points", "points"), p.output("proposals", "cache")
    cfg = resolve(SelectConfig(), p.cfg.select, device=p.cfg.sam.get("device"), work_dir=str(d / "work"),
                  resume=True)
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
    opts = dict(p.cfg.refine)
    if not opts.pop("enabled", True):
        return {"labels": pseudo}, {"refined": 0, "note": "refinement disabled"}
    from refine.instances import refine_coco
    from refine.refiner import RefineConfig

    sam = {k: v for k, v in p.cfg.sam.items() if k in ("model", "checkpoint", "precision", "device")}
    cfg = RefineConfig(**{**sam, "embeddings": p.output("proposals", "cache"), **opts})
    out = p.stage_dir("refine") / "refined.json"
    summary = refine_coco(pseudo, p.cfg.images, out, cfg)
    metrics: dict[str, Any] = {"refined": summary.refined, "failed_images": len(summary.failed)}
    if p.cfg.gt:
        metrics["refined_miou"] = _pseudo_miou(p, out)
    return {"labels": out}, metrics


def _train(p: Pipeline) -> tuple[dict, dict]:
    from segtrain.engine import TrainConfig, train

    d = p.stage_dir("train")
    val = p.cfg.val or p.cfg.gt
    opts = {"device": p.cfg.sam.get("device"), **p.cfg.train}
    cfg = TrainConfig(train=p.output("refine", "labels"), images=p.cfg.images, out=str(d), val=val,
                      val_images=p.cfg.val_images or (p.cfg.images if val else None), **opts)
    summary = train(cfg, resume=True)
    metrics = {"iters": summary.iters, "first_loss": summary.first_loss, "last_loss": summary.last_loss,
               "final_eval": summary.final_eval} if summary else {}
    return {"weights": d / "model_final.pth"}, metrics


def _eval(p: Pipeline) -> tuple[dict, dict]:
    from .evaluate import coco_mask_ap, compare, evaluate_pseudo, format_table, load_pseudo_file
    from .coco import load_coco_json

    d = p.stage_dir("eval")
    val = p.cfg.val or p.cfg.gt
    metrics: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    if val:
        from segtrain.predict import predict

        pred = d / "predictions.json"
        predict(p.output("train", "weights"), p.cfg.val_images or p.cfg.images, pred, ann=val,
                device=p.cfg.sam.get("device"))
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
    from .cache import load_bags
    from .coco import load_coco_json
    from .viz import render_disagreement_sheet, render_overlays, render_side_by_side

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


def closing_table(records: list[StageRecord]) -> str:
    """One line per stage: status, seconds, and its key numbers."""
    lines = [f"{'stage':<10}{'status':<9}{'seconds':>9}  key numbers"]
    for r in records:
        lines.append(f"{r.stage:<10}{r.status:<9}{r.seconds:>9.1f}  {_key_numbers(r)}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _key_numbers(r: StageRecord) -> str:
    m = r.metrics
    if r.stage == "select":
        parts = [f"{m.get('pseudo_masks')} pseudo-masks ({m.get('method')})"]
        for name in ("sam-top1", m.get("method")):
            if isinstance(m.get(name), dict) and m[name].get("mask_miou") is not None:
                parts.append(f"{name} mIoU {m[name]['mask_miou']:.3f}")
        return ", ".join(parts)
    if r.stage == "refine" and "refined_miou" in m:
        return f"{m['refined']} refined, mIoU {_fmt(m['refined_miou'].get('mask_miou'))}"
    if r.stage == "eval" and "mask_ap" in m:
        ap = m["mask_ap"]
        return f"mask AP {ap['AP']:.1f}, AP50 {ap['AP50']:.1f}, AP75 {ap['AP75']:.1f}"
    if r.stage == "train" and m:
        return f"{m.get('iters')} iterations, loss {_fmt(m.get('first_loss'))} → {_fmt(m.get('last_loss'))}"
    return ", ".join(f"{k} {_fmt(v)}" for k, v in m.items() if not isinstance(v, (dict, list)))


def write_report(run: Path, records: list[StageRecord], banner: str | None = None) -> Path:
    """``report.md`` of a run: the closing table, the pseudo-label table, where the pictures are."""
    parts = ["# sap run report", ""]
    if banner:
        parts += ["```", banner.strip(), "```", ""]
    parts += ["## Stages", "", "```", closing_table(records), "```", ""]
    table = next((r.outputs.get("pseudo_table") for r in records if r.stage == "eval"), None)
    if table and Path(table).is_file():
        parts += ["## Pseudo-labels against the ground truth", "", "```", Path(table).read_text().rstrip(), "```", ""]
    viz = next((r for r in records if r.stage == "viz"), None)
    if viz:
        parts += ["## Pictures", ""] + [f"- {k}: `{v}`" for k, v in viz.outputs.items()] + [""]
    return write_text_atomic(run / "report.md", "\n".join(parts))
