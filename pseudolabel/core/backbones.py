"""ImageNet ResNet weights for the networks `sap` trains (the SAPNet selector and SOLOv2).

One place decides where backbone weights come from: torchvision's ImageNet download (cached
under ``$TORCH_HOME``), a local file, weights bundled with the package (:data:`BUNDLED`: the
pocket backbone, pretrained on generated scenes by ``scripts/train_pocket_backbone.py``), or
nothing (a random start, announced loudly).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import Tensor

from .errors import InputError
from .io import load_torch_file
from .progress import logger

#: ResNet name → torchvision weights enum name
RESNET_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                  "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights", "resnet18_half": None}

RANDOM_SPECS = ("none", "random", "")

#: bundled weights: ``--backbone-weights`` name → (ResNet name, file in the weights folder, sha256)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "pocket": ("resnet18_half", "resnet18_half_pocket.pth",
               "33f64bbe9336f42194fcbff4c656b407ce02e224ccf170d5b381b02f731403bc"),
}


def warn_random_backbone(what: str, reason: str) -> None:
    """The loud warning of a backbone that starts from random weights (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    bar = "!" * 78
    logger.warning("\n%s\n  %s starts from RANDOM weights (%s): expect far worse results.\n"
                   "  Allow torchvision to download the ImageNet weights once, or pass\n"
                   "  --backbone-weights PATH (a torchvision ResNet state dict).\n%s", bar, what, reason, bar)


def fetch_resnet_weights(name: str, spec: str | os.PathLike | None, what: str = "the backbone"
                         ) -> tuple[dict[str, Tensor] | None, str]:
    """An ImageNet ResNet state dict, or ``None`` for a random start.

    Args:
        name: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        spec: ``"imagenet"`` (torchvision's weights, downloaded once), a name of :data:`BUNDLED`
            (``"pocket"``: weights shipped in the package, for their own ResNet), a path to a state dict
            (a plain torchvision one, or under a ``state_dict``/``model`` key, with ``module.``,
            ``backbone.body.`` or ``backbone.`` prefixes), or ``"none"`` for random weights.
        what: how the warning names the network.

    Returns:
        ``(state_dict or None, source)`` with source ``"imagenet"``, the bundled name,
        ``"file:PATH"`` or ``"random"``. A failed download falls back to random weights with the warning.

    Raises:
        InputError: unknown name, bundled weights of another ResNet, missing or altered
            bundled weights, no ImageNet weights for ``name``, or a file that is missing,
            unreadable or no state dict.
    """
    if name not in RESNET_WEIGHTS:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(RESNET_WEIGHTS)}")
    if spec is None or str(spec).lower() in RANDOM_SPECS:
        warn_random_backbone(what, "--backbone-weights none")
        return None, "random"
    if str(spec).lower() in BUNDLED:
        return bundled_weights(str(spec).lower(), name), str(spec).lower()
    if str(spec).lower() == "imagenet":
        if RESNET_WEIGHTS[name] is None:
            raise InputError(f"there are no ImageNet weights for {name}; pass --backbone-weights "
                             f"{' or '.join(k for k, v in BUNDLED.items() if v[0] == name) or 'PATH'} or none")
        import torchvision.models as tvm

        try:
            return getattr(tvm, RESNET_WEIGHTS[name]).IMAGENET1K_V1.get_state_dict(progress=False), "imagenet"
        except Exception as e:  # offline, proxy, partial download
            warn_random_backbone(what, f"torchvision could not download the {name} ImageNet weights: "
                                       f"{type(e).__name__}: {e}")
            return None, "random"
    path = Path(spec)
    state = load_torch_file(path, "backbone weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"backbone weights file {path} does not hold a state dict")
    return torchvision_resnet_names(state), f"file:{path}"


def bundled_weights(spec: str, name: str) -> dict[str, Tensor]:
    """The state dict of the bundled weights ``spec`` (:data:`BUNDLED`), checked against its sha256.

    Raises:
        InputError: they are for another ResNet than ``name``, or the file is missing or altered.
    """
    from .engines.loading import WEIGHTS_DIR, sha256_of

    resnet, filename, digest = BUNDLED[spec]
    if name != resnet:
        raise InputError(f"--backbone-weights {spec} holds a {resnet}, not a {name}: pass --backbone {resnet}")
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        raise InputError(f"the {spec} backbone weights {path} are missing; restore them from git or make them "
                         "with python scripts/train_pocket_backbone.py")
    if (found := sha256_of(path)) != digest:
        raise InputError(f"{path} has sha256 {found}, expected {digest}; restore it from git or retrain it "
                         "with python scripts/train_pocket_backbone.py")
    state = load_torch_file(path, "backbone weights file")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


_D2_STEM = re.compile(r"^stem\.conv1\.(norm\.)?(.+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.(norm\.)?(.+)$")


def torchvision_resnet_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet state dict renamed to torchvision's names.

    Accepts torchvision's own names, with ``module.`` (DDP), ``backbone.body.`` (torchvision
    detection models) or ``backbone.`` (mmdetection) prefixes, and detectron2's
    (``[backbone.bottom_up.]stem.conv1[.norm]``, ``res2.0.conv1[.norm]``, ``res2.0.shortcut[.norm]``).
    Other keys (FPN, heads) pass through and are ignored by the loaders. Detectron2's MSRA ResNets
    put the stride in the 1×1 conv where torchvision puts it in the 3×3: their weights load, but
    the network is not quite the one they were trained in.
    """
    clean = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone.bottom_up.", "backbone.body.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        m = _D2_STEM.match(k)
        if m:
            k = f"bn1.{m.group(2)}" if m.group(1) else f"conv1.{m.group(2)}"
        m = _D2_BLOCK.match(k)
        if m:
            stage, block, conv, norm, leaf = m.groups()
            layer = f"layer{int(stage) - 1}.{block}"
            if conv == "shortcut":
                k = f"{layer}.downsample.{1 if norm else 0}.{leaf}"
            else:
                k = f"{layer}.{'bn' + conv[-1] if norm else conv}.{leaf}"
        clean[k] = v
    return clean
