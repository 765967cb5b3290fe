"""The engine interface every promptable segmenter implements: encode once, decode in batches.

A :class:`PromptEngine` holds one model on a device at a precision. ``encode`` runs the image
encoder once per image; ``decode`` runs the prompt encoder and mask decoder for B prompts (one
object each) against that image; ``upscale`` maps the low-resolution logits to masks at the
original image size. Every family (SAM, SAM 2.1, HQ-SAM) answers a prompt with 3 multimask
outputs and their predicted IoUs, or one output with ``multimask=False``.

Frames. Every model sees a 1024×1024 frame; its logits and ``mask_input`` are 256×256 over that
frame and its embedding a 64×64 grid (a coarser one for the pocket SAM, whose encoder sees the
frame at 256², :mod:`.sam1`). Where the image lies in the frame is the embedding's
``input_size`` ``(h', w')``: SAM and HQ-SAM resize the longest side to 1024 and pad right and
bottom (``h', w' ≤ 1024``); SAM 2 stretches the image to the whole frame (``h' = w' = 1024``).
Prompt geometry (points, boxes, mask prompts, CEBox sampling, upscaling) follows from
``input_size`` alone, so one code path serves every family.

Coordinates: every point is ``(x, y)`` and every box ``XYXY``, both in original-image pixels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

IMAGE_SIZE = 1024  # the models' input frame
LOW_RES = 256  # logits and mask_input frame
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def default_encoder_batch(device: torch.device | str) -> int:
    """Images per encoder call when the user does not say: 1 on a CPU (one 1024² image already
    fills its GEMMs: 4096 tokens), 8 on a GPU."""
    return 8 if torch.device(device).type == "cuda" else 1


@dataclass
class ImageEmbedding:
    """An engine's encoding of one image.

    Attributes:
        features: ``1×256×64×64`` float image embedding on the engine's device (CEBox reads it).
        input_size: ``(h', w')``, the region of the 1024 frame the image occupies.
        original_size: ``(H, W)`` of the original image.
        extras: further per-image decoder inputs by name (SAM 2: ``high_res_s0`` ``1×32×256×256``
            and ``high_res_s1`` ``1×64×128×128``; HQ-SAM: ``hq_features`` ``1×32×256×256``).
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every cached tensor by name, ``image_embed`` first."""
        return {"image_embed": self.features, **self.extras}

    def through_fp16(self) -> "ImageEmbedding":
        """The same embedding rounded through fp16, as the proposal cache stores it."""
        return replace(self, features=self.features.half().float(),
                       extras={k: v.half().float() for k, v in self.extras.items()})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], input_size, original_size) -> "ImageEmbedding":
        rest = dict(tensors)
        return cls(rest.pop("image_embed"), tuple(input_size), tuple(original_size), rest)


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


def coords_to_input_frame(xy: np.ndarray, original_hw: tuple[int, int],
                          input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Map ``...×2`` ``(x, y)`` original-pixel coordinates into the 1024 frame.

    ``input_hw`` is where the image lies in the frame (default: SAM's ResizeLongestSide size).
    """
    h, w = original_hw
    nh, nw = input_hw if input_hw is not None else resized_hw(h, w)
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


def boxes_to_input_frame(boxes: np.ndarray, original_hw: tuple[int, int],
                         input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Map ``B×4`` XYXY original-pixel boxes into the 1024 frame."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)
    return coords_to_input_frame(b, original_hw, input_hw).reshape(-1, 4)


class PromptEngine:
    """A promptable segmenter on one device at one precision (subclasses: one per family).

    Subclasses set :attr:`family` and implement :meth:`input_size`, :meth:`_encode`,
    :meth:`_decode` and :attr:`iou_head`; a family whose encoder takes a batch of images also
    implements :meth:`_encode_many` and sets :attr:`batched_encoder`.
    """

    family = ""
    batched_encoder = False  # whether _encode_many runs several images through the encoder at once

    def __init__(self, model, name: str, checkpoint_id: str, device: torch.device | str = "cpu",
                 precision: str = "fp32") -> None:
        from .registry import canonical_engine, engine_spec

        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise InputError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
        self.name = canonical_engine(name)
        if engine_spec(self.name).family != self.family:
            raise InputError(f"engine {self.name} is not of the {self.family} family")
        self.model = model.to(self.device).eval()
        self.checkpoint_id = checkpoint_id
        self.precision = precision
        self.timings = Timings()

    @property
    def model_type(self) -> str:
        """The engine's registry name (the older name of this attribute)."""
        return self.name

    @property
    def frame(self) -> int:
        """Side in pixels of the square the image encoder sees (SAM's 1024; the pocket SAM's 256):
        an image larger than this is shrunk to it, which is what windows avoid (:mod:`..windows`)."""
        encoder = getattr(self.model, "image_encoder", None)
        return int(getattr(encoder, "img_size", None) or getattr(self.model, "image_size", IMAGE_SIZE))

    @property
    def iou_head(self) -> torch.nn.Module:
        """The decoder's IoU-prediction MLP (``.layers[-1]`` is what SAMRefiner++ adapts)."""
        raise NotImplementedError

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Where an ``h×w`` image lies in the 1024 frame, ``(h', w')``."""
        raise NotImplementedError

    def _encode(self, image: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """``1×3×H×W`` float RGB in 0..255 → ``(1×256×64×64 embedding, extras)``."""
        raise NotImplementedError

    def _encode_many(self, images: list[torch.Tensor], sizes: list[tuple[int, int]]
                     ) -> tuple[torch.Tensor, dict]:
        """Several ``1×3×H×W`` images → ``(B×256×64×64 embeddings, extras with batch B)``."""
        raise NotImplementedError

    def _decode(self, emb: ImageEmbedding, points, boxes, masks, multimask: bool):
        """Prompt tensors in the 1024 frame → ``(B×C×256×256 logits, B×C IoUs)``."""
        raise NotImplementedError

    def autocast(self):
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
            The embedding (every tensor float32 whatever the precision).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"encode expects an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        size = self.input_size(h, w)
        x = torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None].float()
        feats, extras = self._encode(x, size)
        emb = ImageEmbedding(feats.float(), size, (h, w), {k: v.float() for k, v in extras.items()})
        self._sync()
        self.timings.encoder += time.perf_counter() - t0
        self.timings.images += 1
        return emb

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> list[ImageEmbedding]:
        """:meth:`encode` for several ``H×W×3`` ``uint8`` RGB images.

        Families with :attr:`batched_encoder` run the encoder once on the ``B×3×1024×1024``
        stack (each image resized, normalised and padded as :meth:`encode` does it); the others,
        and a single image, go one by one. The timings count one call, ``B`` images. A batched
        GEMM rounds differently from a single one: embeddings agree to float rounding.
        """
        if len(images) <= 1 or not self.batched_encoder:
            return [self.encode(image) for image in images]
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"encode expects an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
        t0 = time.perf_counter()
        xs, sizes = [], []
        for image in images:
            sizes.append(self.input_size(*image.shape[:2]))
            xs.append(torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None].float())
        feats, extras = self._encode_many(xs, sizes)
        out = [ImageEmbedding(feats[i:i + 1].float(), size, tuple(image.shape[:2]),
                              {k: v[i:i + 1].float() for k, v in extras.items()})
               for i, (image, size) in enumerate(zip(images, sizes))]
        self._sync()
        self.timings.encoder += time.perf_counter() - t0
        self.timings.images += len(images)
        return out

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
            mask_input: ``B×1×256×256`` logits in the 1024 frame, or None.
            multimask: 3 masks per prompt (True) or the model's single-mask output.

        Returns:
            ``(low_res_logits, iou_pred)``: ``B×C×256×256`` float32 logits in the 1024 frame and
            ``B×C`` predicted IoUs, on the engine's device (C = 3 or 1).
        """
        t0 = time.perf_counter()
        dev = self.device
        points = None
        if point_coords is not None:
            pc = coords_to_input_frame(np.asarray(point_coords, dtype=np.float64), emb.original_size,
                                       emb.input_size)
            points = (torch.as_tensor(pc, dtype=torch.float32, device=dev),
                      torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev))
        box_t = None
        if boxes is not None:
            box_t = torch.as_tensor(boxes_to_input_frame(boxes, emb.original_size, emb.input_size),
                                    dtype=torch.float32, device=dev)
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        with self.autocast():
            low_res, iou = self._decode(emb, points, box_t, mask_t, multimask)
        low_res, iou = low_res.float(), iou.float()
        self._sync()
        self.timings.decoder += time.perf_counter() - t0
        self.timings.prompts += low_res.shape[0]
        return low_res, iou

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, emb: ImageEmbedding, threshold: float | None = 0.0
                ) -> torch.Tensor:
        """Map ``B×C×256×256`` logits to the original ``H×W``.

        One bilinear sampling straight from the low-resolution logits at each pixel's centre in
        the frame (SAM upsamples to 1024, crops, then resizes again — the same geometry at ~10×
        the cost; SAM 2 resizes the 256² logits to ``H×W`` directly, which this equals).

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

    @torch.inference_mode()
    def official_upscale(self, low_res: torch.Tensor, emb: ImageEmbedding) -> torch.Tensor:
        """``B×C×256×256`` → ``B×C×H×W`` float logits by the family's own predictor's upsampling
        (SAM and HQ-SAM: to 1024², crop, resize; SAM 2: one bilinear resize, which :meth:`upscale`
        equals)."""
        return self.upscale(low_res, emb, threshold=None)

    def info(self) -> dict:
        """What identifies this engine's results: engine name, checkpoint sha256, precision."""
        return {"engine": self.name, "checkpoint_sha256": self.checkpoint_id, "precision": self.precision}


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score of ``...×H×W`` logits: IoU of the masks at threshold ± offset."""
    hi = (logits > threshold + offset).flatten(-2).sum(-1, dtype=torch.int32)
    lo = (logits > threshold - offset).flatten(-2).sum(-1, dtype=torch.int32)
    return torch.where(lo > 0, hi.float() / lo.clamp(min=1).float(), torch.zeros_like(hi, dtype=torch.float32))
