"""SAM model types: their architecture, official checkpoints (URL, sha256, download), and loading.

Model types (:data:`SAM_TYPES`): the three official ones (``vit_h``, ``vit_l``, ``vit_b``) with
their download URLs and sha256, and ``tiny``, the real SAM architecture at a small width, for
tests and CPU smoke runs (it has no released weights). Checkpoints download once into
:func:`checkpoint_dir`; ``--checkpoint none`` keeps seeded random weights, loudly.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .errors import InputError
from .io import load_torch_file
from .progress import logger

IMAGE_SIZE = 1024  # SAM's input frame
RANDOM_CHECKPOINT = "none"


@dataclass(frozen=True)
class SamType:
    """Architecture and release of one SAM model type."""

    encoder_dim: int
    encoder_depth: int
    encoder_heads: int
    global_attn: tuple[int, ...]
    decoder_mlp_dim: int = 2048
    url: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None


_DL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_TYPES: dict[str, SamType] = {
    "vit_h": SamType(1280, 32, 16, (7, 15, 23, 31), url=_DL + "sam_vit_h_4b8939.pth",
                     sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "vit_l": SamType(1024, 24, 16, (5, 11, 17, 23), url=_DL + "sam_vit_l_0b3195.pth",
                     sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_b": SamType(768, 12, 12, (2, 5, 8, 11), url=_DL + "sam_vit_b_01ec64.pth",
                     sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    # Tests and offline smoke runs: SAM's own modules, narrow encoder and decoder MLP.
    "tiny": SamType(64, 2, 2, (1,), decoder_mlp_dim=256),
}


def checkpoint_dir() -> Path:
    """Where downloaded checkpoints live: ``$SAP_CHECKPOINT_DIR`` or ``~/.cache/sap/checkpoints``."""
    env = os.environ.get("SAP_CHECKPOINT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sap" / "checkpoints"


def build_sam_architecture(model_type: str, seed: int = 0):
    """Build the SAM ``nn.Module`` of ``model_type`` with random weights (seeded, so repeatable)."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    if model_type not in SAM_TYPES:
        raise InputError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(SAM_TYPES)}")
    spec = SAM_TYPES[model_type]
    embed = 256
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=spec.encoder_depth, embed_dim=spec.encoder_dim, img_size=IMAGE_SIZE,
                mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=spec.encoder_heads, patch_size=16, qkv_bias=True, use_rel_pos=True,
                global_attn_indexes=spec.global_attn, window_size=14, out_chans=embed),
            prompt_encoder=PromptEncoder(
                embed_dim=embed, image_embedding_size=(IMAGE_SIZE // 16, IMAGE_SIZE // 16),
                input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=embed,
                                              mlp_dim=spec.decoder_mlp_dim, num_heads=8),
                transformer_dim=embed, iou_head_depth=3, iou_head_hidden_dim=256),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def download_checkpoint(model_type: str, dest_dir: Path | None = None) -> Path:
    """Download the official checkpoint of ``model_type`` once, checking its sha256.

    Raises:
        InputError: the type has no released weights, the download fails (offline), or the
            downloaded file's sha256 is wrong.
    """
    spec = SAM_TYPES[model_type]
    if spec.url is None:
        raise InputError(f"SAM type {model_type!r} has no released weights; use --checkpoint none")
    dest_dir = dest_dir or checkpoint_dir()
    dest = dest_dir / spec.filename
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    logger.info("downloading %s to %s", spec.url, dest)
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(spec.url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"could not download the {model_type} SAM checkpoint ({e}); download {spec.url} on a "
            f"machine with internet and put it at {dest} or pass --checkpoint PATH"
        ) from None
    digest = sha256_of(tmp)
    if digest != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise InputError(f"the downloaded {spec.filename} has sha256 {digest}, expected {spec.sha256}")
    os.replace(tmp, dest)
    return dest


def load_sam(model_type: str, checkpoint: str | os.PathLike | None = None):
    """Build SAM and load its weights.

    Args:
        model_type: a key of :data:`SAM_TYPES`.
        checkpoint: a ``.pth`` state dict; ``None`` downloads (or reuses) the official one;
            ``"none"`` keeps seeded random weights (tests and offline demos only: the masks
            are meaningless, and a warning says so).

    Returns:
        ``(model, checkpoint_id)``: the model in eval mode on the CPU, and the sha256 of the
        checkpoint file (``"random-init"`` for random weights).
    """
    sam = build_sam_architecture(model_type)
    if checkpoint is not None and str(checkpoint).lower() == RANDOM_CHECKPOINT:
        logger.warning(
            "!!! SAM %s has RANDOM weights (--checkpoint none): its masks are meaningless; "
            "use this only for tests and offline demos !!!", model_type)
        return sam, "random-init"
    path = Path(checkpoint) if checkpoint is not None else download_checkpoint(model_type)
    state = load_torch_file(path, "SAM checkpoint")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        sam.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"SAM checkpoint {path} does not fit model type {model_type} ({first})") from None
    return sam, sha256_of(path)


def save_random_checkpoint(model_type: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised state dict of ``model_type`` (benchmarks and tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_sam_architecture(model_type, seed=seed).state_dict(), path)
    return path
