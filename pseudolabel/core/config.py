"""Configuration that flows one way: defaults → file → flags, and a record beside every output.

Each stage defines its defaults as a dataclass. :func:`resolve` overlays a YAML/JSON file and
then the options given on the command line (``None`` means "not given"), and
:func:`write_run_config` writes the resolved values with the software versions next to the
stage's output, so every output folder says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .engines.registry import DEFAULT_ENGINE, engine_option
from .errors import InputError
from .io import write_text_atomic

T = TypeVar("T")


@dataclasses.dataclass
class EngineOptions:
    """Which promptable segmenter runs, from which weights, at what precision, on which device.

    The one record of these options: `sap proposals`' configuration extends it, the pipeline's
    ``sam`` section holds its values (with ``device`` at the pipeline's top level), and the
    commands share one set of flags for it (``pseudolabel/commands/common.py``).

    Attributes:
        engine: a name of :data:`pseudolabel.core.engines.registry.ENGINES` (None: ``sam_vit_h``).
        model: the deprecated spelling, a SAM type (``vit_b`` = engine ``sam_vit_b``); folded into
            ``engine`` on construction and then None.
        checkpoint: the engine's weights file; ``"none"`` = random weights (tests); None: the
            official checkpoint.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (None: the best available).
    """

    engine: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    precision: str = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        self.engine, self.model = engine_option(self.engine, self.model), None

    @property
    def engine_name(self) -> str:
        return self.engine or DEFAULT_ENGINE

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that are engine options (config sections mix them with others)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if k in names}


def load_config_file(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read a YAML or JSON mapping; an absent path gives ``{}``."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"configuration file {path} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"configuration file {path} is not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"configuration file {path} must hold a mapping of option: value")
    return data


def resolve(defaults: T, file_values: dict[str, Any] | None = None, **flags: Any) -> T:
    """Return a copy of the dataclass ``defaults`` with file values, then non-``None`` flags.

    Raises:
        InputError: the file names an option the dataclass does not have.
    """
    names = {f.name for f in dataclasses.fields(defaults)}
    file_values = dict(file_values or {})
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise InputError(f"unknown configuration option(s): {', '.join(unknown)}")
    merged = {**file_values, **{k: v for k, v in flags.items() if v is not None and k in names}}
    return dataclasses.replace(defaults, **merged)


def check_range(value: Any, flag: str, low: float | None = None, high: float | None = None,
                integer: bool = False, low_open: bool = False) -> None:
    """Raise one sentence unless ``value`` is a finite number (whole if ``integer``) in the range.

    Args:
        flag: how the user names the option (``"--epochs"``).
        low, high: inclusive bounds (``low_open``: ``value`` must exceed ``low``); None = unbounded.

    Raises:
        InputError: e.g. "--lr must be a number above 0, not nan".
    """
    import math

    kind = "a whole number" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'above' if low_open else 'at least'} {low:g}")
        if high is not None:
            bounds.append(f"at most {high:g}")
        raise InputError(f"{flag} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}, not {value!r}")


def versions() -> dict[str, str]:
    """Versions of the software that shapes results (sap, Python, torch, ...)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("sap", "torch", "torchvision", "segment-anything", "sam2", "segment-anything-hq", "pycocotools",
                 "numpy", "opencv-python-headless", "detectron2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples → plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_record(stage: str, config: Any, **extra: Any) -> dict[str, Any]:
    """The record written beside a stage's output: stage, config, versions, time, extras."""
    return {
        "stage": stage,
        "config": to_jsonable(config),
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **to_jsonable(extra),
    }


def write_run_config(path: str | os.PathLike, stage: str, config: Any, **extra: Any) -> Path:
    """Write :func:`run_record` as YAML to ``path`` atomically (JSON if it ends in ``.json``)."""
    record = run_record(stage, config, **extra)
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(record, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(record, sort_keys=False)
    return write_text_atomic(path, text)


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the resolved configuration of a file output goes: ``OUT.json`` → ``OUT.config.yaml``."""
    output = Path(output)
    return output.with_name(output.stem + ".config.yaml")
