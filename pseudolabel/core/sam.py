"""The Segment Anything engine: encode each image once, decode prompts in batches.

One :class:`SamEngine` holds a SAM model on a device at a precision. ``encode`` runs the image
encoder once per image; ``decode`` runs the prompt encoder and mask decoder for a batch of B
prompts (one object each) against that embedding; ``upscale`` maps the low-resolution logits
to binary masks at the original image size.

Coordinates: every point is ``(x, y)`` and every box ``XYXY``, both in original-image pixels;
the engine applies SAM's ResizeLongestSide transform itself.

Model types, checkpoints and loading: :mod:`.sam_models`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .device import pick_device
from .errors import InputError
from .sam_models import IMAGE_SIZE, load_sam

LOW_RES = 256  # SAM's mask logits and mask_input frame
def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA with bf16 or CPUs with AVX512-BF16/AMX, fp16 on other GPUs, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        cpu = torch.cpu
        fast = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or \
            getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        return "bf16" if fast else "fp32"
    return "fp32"


def default_prompt_batch(device: torch.device) -> int:
    """Prompts per decoder call when the user does not say.

    Measured (vit_b decoder, 16 points, 2-core CPU): 1 per call 122 ms/point in fp32 and 42 in
    bf16, 4 per call 74 and 40, 16 per call 136 and 85 — the per-prompt copy of the 64×64
    embedding stops fitting in cache — so 4 on a CPU; on a GPU large batches fill the device.
    """
    return 64 if torch.device(device).type == "cuda" else 4


def _sdpa_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SAM encoder attention through ``F.scaled_dot_product_attention``.

    The same function as segment_anything's ``Attention.forward`` (softmax of the scaled q·k plus
    the decomposed relative-position bias, times v), but the bias goes in as ``attn_mask`` so the
    fused kernel never builds the fp32 attention matrix; same error against fp32 as SAM's path.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    heads = self.num_heads
    qkv = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    bias = None
    if self.use_rel_pos:
        r_q = q.reshape(b * heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b * heads, h * w, h * w).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_fused_attention(model) -> int:
    """Route the global-attention blocks of SAM's image encoder through
    :func:`_sdpa_attention_forward` (in place); returns how many were switched.

    Only the global blocks (4096 tokens, 4 of vit_b's 12) gain: on our 2-core CPU the encoder
    went from ~6.1 to ~4.5 s in bf16 and from ~19 to ~11 s in fp32; switching the windowed
    blocks too was slower in bf16.
    """
    import types

    n = 0
    for block in model.image_encoder.blocks:
        if block.window_size == 0:
            block.attn.forward = types.MethodType(_sdpa_attention_forward, block.attn)
            n += 1
    return n


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ImageEmbedding:
    """SAM's embedding of one image.

    Attributes:
        features: ``1×256×64×64`` float tensor on the engine's device.
        input_size: ``(h, w)`` of the image after ResizeLongestSide (longest side 1024).
        original_size: ``(H, W)`` of the original image.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class Timings:
    """Seconds spent in each part of the engine since creation (or the last reset)."""

    encoder: float = 0.0
    decoder: float = 0.0
    images: int = 0
    prompts: int = 0
    extra: dict = field(default_factory=dict)


def resized_hw(h: int, w: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """``(h', w')`` of an ``h×w`` image after SAM's ResizeLongestSide (rounding as SAM does)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def coords_to_input_frame(xy: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Map ``...×2`` ``(x, y)`` original-pixel coordinates into the resized 1024 frame."""
    h, w = original_hw
    nh, nw = resized_hw(h, w)
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


def boxes_to_input_frame(boxes: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Map ``B×4`` XYXY original-pixel boxes into the resized 1024 frame."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)
    return coords_to_input_frame(b, original_hw).reshape(-1, 4)


class SamEngine:
    """SAM on one device at one precision, with encode-once / decode-batched helpers."""

    def __init__(self, model, model_type: str, checkpoint_id: str, device: torch.device | str = "cpu",
                 precision: str = "fp32", fused_attention: bool = True) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise InputError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
        self.model = model.to(self.device).eval()
        if fused_attention:
            use_fused_attention(self.model)
        self.model_type = model_type
        self.checkpoint_id = checkpoint_id
        self.precision = precision
        self.timings = Timings()

    @classmethod
    def create(cls, model_type: str = "vit_h", checkpoint: str | None = None, device: str | None = None,
               precision: str = "fp32") -> "SamEngine":
        """Load the model (see :func:`load_sam`) and pick the device (see :func:`pick_device`)."""
        model, ckpt = load_sam(model_type, checkpoint)
        return cls(model, model_type, ckpt, pick_device(device), precision)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """Run the image encoder once.

        Args:
            image: ``H×W×3`` ``uint8`` RGB.

        Returns:
            The embedding (features kept as float32 whatever the precision).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"encode expects an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        nh, nw = resized_hw(h, w)
        x = torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None].float()
        # SAM's ResizeLongestSide resizes uint8 with PIL; bilinear+antialias on the float tensor
        # is the same resampling up to rounding.
        x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
        x = self.model.preprocess(x)  # normalise and pad to 1024×1024
        with self._autocast():
            feats = self.model.image_encoder(x)
        feats = feats.float()
        self._sync()
        self.timings.encoder += time.perf_counter() - t0
        self.timings.images += 1
        return ImageEmbedding(feats, (nh, nw), (h, w))

    @torch.inference_mode()
    def decode(self, emb: ImageEmbedding, point_coords: np.ndarray | None = None,
               point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
               mask_input: np.ndarray | torch.Tensor | None = None,
               multimask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts (one object each) against one image embedding.

        Args:
            emb: the image's embedding.
            point_coords: ``B×N×2`` ``(x, y)`` in original-image pixels, or None.
            point_labels: ``B×N`` (1 foreground, 0 background, -1 padding), with point_coords.
            boxes: ``B×4`` XYXY in original-image pixels, or None.
            mask_input: ``B×1×256×256`` logits in the padded 1024 frame (see SAM), or None.
            multimask: 3 masks per prompt (True) or SAM's single-mask output.

        Returns:
            ``(low_res_logits, iou_pred)``: ``B×C×256×256`` float32 logits in the padded 1024
            frame and ``B×C`` predicted IoUs, on the engine's device (C = 3 or 1).
        """
        t0 = time.perf_counter()
        dev = self.device
        points = None
        if point_coords is not None:
            pc = coords_to_input_frame(np.asarray(point_coords, dtype=np.float64), emb.original_size)
            points = (torch.as_tensor(pc, dtype=torch.float32, device=dev),
                      torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev))
        box_t = None
        if boxes is not None:
            box_t = torch.as_tensor(boxes_to_input_frame(boxes, emb.original_size),
                                    dtype=torch.float32, device=dev)
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=box_t, masks=mask_t)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=emb.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        low_res, iou = low_res.float(), iou.float()
        self._sync()
        self.timings.decoder += time.perf_counter() - t0
        self.timings.prompts += low_res.shape[0]
        return low_res, iou

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, emb: ImageEmbedding, threshold: float | None = 0.0
                ) -> torch.Tensor:
        """Map ``B×C×256×256`` logits to the original ``H×W``.

        One bilinear sampling straight from the low-resolution logits (SAM upsamples to 1024,
        crops, then resizes again; the geometry is the same, the cost ~10× lower).

        Returns:
            ``B×C×H×W`` bool masks (``logits > threshold``), or float logits if threshold is None.
        """
        b, c = low_res.shape[:2]
        h, w = emb.original_size
        nh, nw = emb.input_size
        dev = low_res.device
        # centre of original pixel u maps to (u + 0.5) * nw / w in the 1024 frame, i.e. a
        # normalised grid coordinate ((u + 0.5) * nw / w) / 1024 * 2 - 1.
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * (nw / w) / IMAGE_SIZE * 2 - 1
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * (nh / h) / IMAGE_SIZE * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].expand(b, h, w, 2)
        out = F.grid_sample(low_res.float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out > threshold if threshold is not None else out

    def info(self) -> dict:
        """What identifies this engine's results: type, checkpoint sha256, precision."""
        return {"model_type": self.model_type, "checkpoint_sha256": self.checkpoint_id,
                "precision": self.precision}


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score of ``...×H×W`` logits: IoU of the masks at threshold ± offset."""
    hi = (logits > threshold + offset).flatten(-2).sum(-1, dtype=torch.int32)
    lo = (logits > threshold - offset).flatten(-2).sum(-1, dtype=torch.int32)
    return torch.where(lo > 0, hi.float() / lo.clamp(min=1).float(), torch.zeros_like(hi, dtype=torch.float32))


def points_array(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """``N`` (x, y) points → ``N×1×2`` prompt coordinates (one point per object)."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
