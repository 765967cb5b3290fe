"""Named proposal engines: which family, which architecture, which official checkpoint.

An engine name (``sam_vit_b``, ``sam2.1_hiera_b+``, ``hq_vit_h``, ...) picks a family module
(:mod:`.sam1`, :mod:`.sam2`, :mod:`.hq`), the architecture inside it, and the official checkpoint
with what we know of the file. Nothing here imports torch or an optional package, so ``sap env``
and argument checks stay cheap; :func:`availability` asks ``importlib`` whether a package is
installed without importing it.

Checkpoint digests. SAM v1's sha256 values are published with its release; for SAM 2.1 and
HQ-SAM no sha256 was found in their repositories or packages, only md5 sums published by
independent projects (IOPaint's model table; SAM-PT's checkpoint guide for HQ-SAM), which the
download checks instead. Either way the checkpoint id recorded beside every output is the
file's sha256, computed locally.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import InputError

DEFAULT_ENGINE = "sam_vit_h"
#: ``--model`` values of sap ≤ 0.1 (SAM v1 types) → engine names
ALIASES = {"vit_h": "sam_vit_h", "vit_l": "sam_vit_l", "vit_b": "sam_vit_b", "tiny": "sam_tiny",
           "pocket": "sam_pocket"}
#: what the pocket SAM is, for banners, ``sap env`` and the docs
POCKET_NOTE = ("a pocket SAM trained on synthetic shapes (SAM's architecture at a small width, "
               "scripts/train_pocket_sam.py): not SAM, not for real photos")


@dataclass(frozen=True)
class Family:
    """What an engine family needs installed and caches per image.

    Attributes:
        module: the family module under :mod:`pseudolabel.core.engines`.
        packages: import names of the packages it needs (the first builds its networks).
        install: one sentence of install help.
        layout: ``(name, shape)`` of each per-image tensor the engine caches (batch 1, 1024 frame).
    """

    module: str
    packages: tuple[str, ...]
    install: str
    layout: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def cached_bytes(self) -> int:
        """Bytes per image of the cached tensors in fp16."""
        total = 0
        for _, shape in self.layout:
            n = 1
            for s in shape:
                n *= s
            total += 2 * n
        return total


_EMBED = ("image_embed", (1, 256, 64, 64))
FAMILIES: dict[str, Family] = {
    "sam": Family("sam1", ("segment_anything",), "pip install segment-anything", (_EMBED,)),
    # SAM 2's decoder also reads the two finer levels of the Hiera FPN (after conv_s0/conv_s1);
    # image_embed already holds the no-memory embedding the image predictor adds.
    "sam2": Family("sam2", ("sam2", "hydra"), "pip install 'sap[sam2]' (SAM 2.1 from the package index)",
                   (_EMBED, ("high_res_s0", (1, 32, 256, 256)), ("high_res_s1", (1, 64, 128, 128)))),
    # HQ-SAM's decoder fuses the first global-attention block's ViT features with the embedding
    # into one 32×256×256 map per image (hq_features); caching that map is smaller than the ViT
    # features themselves (C×64×64, C = 768..1280) and spares the fusion on every decoder call.
    "hq": Family("hq", ("segment_anything_hq", "timm"), "pip install 'sap[hq]' (segment-anything-hq and timm)",
                 (_EMBED, ("hq_features", (1, 32, 256, 256)))),
}


@dataclass(frozen=True)
class EngineSpec:
    """One named engine.

    Attributes:
        name: registry key.
        family: key of :data:`FAMILIES`.
        arch: the family's architecture key (a SAM type, a SAM 2 config file, an HQ-SAM type).
        url: official checkpoint (None: test-only architecture without released weights).
        sha256, md5: the published digest of that file, where one exists (see module docstring).
        size: its size in bytes where published.
        note: one line for ``sap env`` and the docs.
        bundled: a checkpoint shipped in ``pseudolabel/core/weights/`` (the pocket SAM), loaded
            when no checkpoint is given; ``sha256`` is then that file's digest.
    """

    name: str
    family: str
    arch: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    note: str = ""
    bundled: str | None = None

    @property
    def filename(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def family_info(self) -> Family:
        return FAMILIES[self.family]


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_SAM2_CFG = "configs/sam2.1/sam2.1_hiera_{}.yaml"

ENGINES: dict[str, EngineSpec] = {e.name: e for e in (
    EngineSpec("sam_vit_h", "sam", "vit_h", _SAM + "sam_vit_h_4b8939.pth",
               sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
               md5="4b8939a88964f0f4ff5f5b2642c598a6", note="SAM ViT-H (the papers' proposals)"),
    EngineSpec("sam_vit_l", "sam", "vit_l", _SAM + "sam_vit_l_0b3195.pth",
               sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
               md5="0b3195507c641ddb6910d2bb5adee89c", note="SAM ViT-L"),
    EngineSpec("sam_vit_b", "sam", "vit_b", _SAM + "sam_vit_b_01ec64.pth",
               sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
               md5="01ec64d29a2fca3f0661936605ae66f8", note="SAM ViT-B"),
    EngineSpec("sam_tiny", "sam", "tiny", note="SAM's modules at a small width, random weights (tests)"),
    EngineSpec("sam_pocket", "sam", "pocket", bundled="sam_pocket.pth", note=POCKET_NOTE,
               sha256="7fb21a25b0b84c3d9f9a4abe2e5689451d2b63f0faac96b8a71c2e5bb82287f6"),
    EngineSpec("sam2.1_hiera_t", "sam2", _SAM2_CFG.format("t"), _SAM2 + "sam2.1_hiera_tiny.pt",
               md5="6aa6761c9da74fbaa74b4c790a0a2007", note="SAM 2.1 Hiera-T"),
    EngineSpec("sam2.1_hiera_s", "sam2", _SAM2_CFG.format("s"), _SAM2 + "sam2.1_hiera_small.pt",
               md5="51713b3d1994696d27f35f9c6de6f5ef", note="SAM 2.1 Hiera-S"),
    EngineSpec("sam2.1_hiera_b+", "sam2", _SAM2_CFG.format("b+"), _SAM2 + "sam2.1_hiera_base_plus.pt",
               md5="ec7bd7d23d280d5e3cfa45984c02eda5", note="SAM 2.1 Hiera-B+"),
    EngineSpec("sam2.1_hiera_l", "sam2", _SAM2_CFG.format("l"), _SAM2 + "sam2.1_hiera_large.pt",
               md5="2b30654b6112c42a115563c638d238d9", size=898_921_545, note="SAM 2.1 Hiera-L"),
    EngineSpec("hq_vit_h", "hq", "vit_h", _HQ + "sam_hq_vit_h.pth",
               md5="3560f6b6a5a6edacd814a1325c39640a", note="HQ-SAM ViT-H"),
    EngineSpec("hq_vit_l", "hq", "vit_l", _HQ + "sam_hq_vit_l.pth",
               md5="08947267966e4264fb39523eccc33f86", note="HQ-SAM ViT-L"),
    EngineSpec("hq_vit_b", "hq", "vit_b", _HQ + "sam_hq_vit_b.pth",
               md5="c6b8953247bcfdc8bb8ef91e36a6cacc", note="HQ-SAM ViT-B"),
    EngineSpec("hq_vit_tiny", "hq", "vit_tiny", _HQ + "sam_hq_vit_tiny.pth",
               md5="3a661ab92d4088ccd6232fa542998a65", note="Light HQ-SAM (TinyViT encoder)"),
    EngineSpec("hq_tiny", "hq", "tiny", note="HQ-SAM's ViT modules at a small width, random weights (tests)"),
)}


def canonical_engine(name: str) -> str:
    """The registry name of ``name`` (an engine name or a deprecated SAM type such as ``vit_b``).

    Raises:
        InputError: no such engine.
    """
    name = str(name).strip()
    if name in ENGINES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


def engine_spec(name: str) -> EngineSpec:
    return ENGINES[canonical_engine(name)]


def engine_option(engine: str | None, model: str | None) -> str | None:
    """Reconcile ``--engine`` with the deprecated ``--model`` (a SAM type); None if neither.

    Raises:
        InputError: both given and naming different engines.
    """
    if model is None:
        return canonical_engine(engine) if engine is not None else None
    from ..progress import logger

    from_model = canonical_engine(model)
    if engine is not None and canonical_engine(engine) != from_model:
        raise InputError(f"--engine {engine} and the deprecated --model {model} disagree; drop --model")
    logger.warning("--model %s is deprecated; use --engine %s", model, from_model)
    return from_model


def availability(name: str) -> str | None:
    """None when ``name`` can run here, else why not (one sentence with install help)."""
    fam = engine_spec(name).family_info
    missing = [p for p in fam.packages if importlib.util.find_spec(p) is None]
    if missing:
        return f"{', '.join(missing)} not installed: {fam.install}"
    return None
