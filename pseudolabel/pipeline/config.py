"""What ``sap pipeline`` is asked to do: :class:`PipelineConfig`, from defaults → a YAML file (or a
shipped example, ``coco`` or ``custom``) → ``--set section.key=value`` → flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pseudolabel.core.config import load_config_file
from pseudolabel.core.engines.registry import DEFAULT_ENGINE, engine_option
from pseudolabel.core.errors import InputError


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
    device: str | None = None  # every stage's device: cpu, cuda, cuda:1 ... (None: the best available)
    sam: dict[str, Any] = field(default_factory=lambda: {"engine": None, "checkpoint": None, "precision": "auto"})
    proposals: dict[str, Any] = field(default_factory=lambda: {"prompts": "point,point_box",
                                                                "save_embeddings": True})
    select: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=lambda: {"enabled": True})
    train: dict[str, Any] = field(default_factory=dict)
    viz: dict[str, Any] = field(default_factory=lambda: {"limit": 8, "sheet": 8})

    def __post_init__(self) -> None:
        self.lift_device()

    def lift_device(self) -> None:
        """Read ``sam.device``, where configurations before the top-level ``device`` said it."""
        if "device" in self.sam:
            legacy = self.sam.pop("device")
            self.device = self.device if self.device is not None else legacy


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
    cfg.lift_device()
    # one engine name for every stage (``model``, a SAM type, is the deprecated spelling); flags win
    cfg.sam["engine"] = engine_option(cfg.sam.get("engine"), cfg.sam.pop("model", None)) or DEFAULT_ENGINE
    flag_engine = engine_option(flags.pop("engine", None), flags.pop("model", None))
    if flag_engine is not None:
        cfg.sam["engine"] = flag_engine
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("checkpoint", "precision"):
            cfg.sam[key] = value
        else:
            setattr(cfg, key, value)
    if not cfg.images:
        raise InputError("the pipeline needs an image folder (--images or 'images:' in the config)")
    if not cfg.points and not cfg.gt:
        raise InputError("the pipeline needs a point file (--points) or full masks to derive points from (--gt)")
    return cfg
