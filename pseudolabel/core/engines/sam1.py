"""SAM v1 (segment_anything): architectures, the release format, and :class:`SamEngine`.

Architectures by type (:data:`SAM_TYPES`): the three released ones; ``tiny``, SAM's own modules
at a small width for tests and CPU smoke runs; and ``pocket``, SAM's modules at a small width
trained here on generated shapes (``scripts/train_pocket_sam.py``; not SAM, not for real
photos). The image is resized (longest side 1024, PIL's resampling up to rounding), normalised
and padded right/bottom; the embedding is ``1×256×64×64``. ``pocket``'s encoder has a smaller
frame (256, 16-px patches: a ``1×64×16×16`` embedding and 64² logits); :func:`encoder_input`,
:func:`to_model_masks` and :func:`to_low_res` keep SAM's 1024 / 256² frames for every caller.
The encoder runs one of three paths (:data:`ENCODER_PATHS`): ``fast`` (default,
:mod:`.sam1_fast`: every attention through SDPA with the relative-position bias as its mask,
weights cast once, fewer passes over memory), ``fused`` (only the global-attention blocks through
SDPA, :func:`use_fused_attention`) or ``plain`` (segment_anything's own forward). They compute
the same function; the fast path agrees with the plain one to float rounding (tests/test_sam_fast.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .base import IMAGE_SIZE, LOW_RES, PromptEngine, resized_hw

STRICT_UNEXPECTED = True
ENCODER_PATHS = ("fast", "fused", "plain")


@dataclass(frozen=True)
class SamType:
    """Architecture of one SAM model type."""

    encoder_dim: int
    encoder_depth: int
    encoder_heads: int
    global_attn: tuple[int, ...]
    decoder_mlp_dim: int = 2048
    window_size: int = 14
    decoder_attn_downsample: int = 2  # the TwoWayTransformer's cross-attention downsampling
    embed_dim: int = 256  # the image embedding's channels (the prompt encoder's and decoder's width)
    decoder_heads: int = 8  # the TwoWayTransformer's attention heads
    # The encoder's own input frame and patch. SAM's: 1024 and 16 (a 64×64 embedding, 256²
    # logits). A smaller frame sees the 1024 frame downsampled (:func:`encoder_input`); its
    # prompts stay in 1024-frame coordinates and its logits are resized to and from 256²
    # (:func:`to_model_masks`, :func:`to_low_res`), so every caller sees SAM's geometry.
    frame: int = IMAGE_SIZE
    patch: int = 16


SAM_TYPES: dict[str, SamType] = {
    "vit_h": SamType(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamType(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamType(768, 12, 12, (2, 5, 8, 11)),
    # Tests and offline smoke runs: SAM's own modules, narrow encoder and decoder MLP.
    "tiny": SamType(64, 2, 2, (1,), decoder_mlp_dim=256),
    # Trained here on generated shapes (scripts/train_pocket_sam.py); NOT for real photos.
    # Frame 256 with 16-px patches: a 16×16 embedding and 64² logits (one cell per 16 px of the
    # 1024 frame, SAM's is 4); every block attends globally (docs/pocket.md).
    "pocket": SamType(64, 4, 4, (0, 1, 2, 3), decoder_mlp_dim=256, window_size=0, embed_dim=64,
                      decoder_heads=2, frame=256, patch=16),
}


def build(spec) -> torch.nn.Module:
    """SAM of ``spec.arch`` with the current RNG's random weights (segment_anything's modules)."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    t = SAM_TYPES[spec.arch]
    embed = t.embed_dim
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=t.encoder_depth, embed_dim=t.encoder_dim, img_size=t.frame,
            mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=t.encoder_heads, patch_size=t.patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=t.global_attn, window_size=t.window_size, out_chans=embed),
        prompt_encoder=PromptEncoder(
            embed_dim=embed, image_embedding_size=(t.frame // t.patch, t.frame // t.patch),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed, mlp_dim=t.decoder_mlp_dim, num_heads=t.decoder_heads,
                                          attention_downsample_rate=t.decoder_attn_downsample),
            transformer_dim=embed, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def release_format(state: dict) -> dict:
    """SAM's checkpoints are the bare state dict."""
    return state


def resize_longest_side(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``1×3×H×W`` float 0..255 → ``1×3×h'×w'`` resized like SAM's ResizeLongestSide.

    SAM resizes uint8 with PIL; bilinear+antialias on the float tensor, rounded back to integer
    levels, is the same resampling up to rounding.
    """
    x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255)


def encoder_input(model, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``1×3×H×W`` float RGB 0..255 → the encoder's ``1×3×F×F`` input (F = its own frame).

    SAM's preprocessing: resize so the image fills ``size`` = ``(h', w')`` of the 1024 frame,
    normalise, pad right and bottom. An encoder with a smaller frame gets the image resized
    straight to ``(h', w')·F/1024`` (rounded, at least 1 px) and padded to ``F×F``: the same place
    in its frame to within half of one of its pixels.
    """
    frame = model.image_encoder.img_size
    if frame == IMAGE_SIZE:
        return model.preprocess(resize_longest_side(x, size))
    small = tuple(max(1, round(v * frame / IMAGE_SIZE)) for v in size)
    x = (resize_longest_side(x, small) - model.pixel_mean) / model.pixel_std
    return F.pad(x, (0, frame - x.shape[-1], 0, frame - x.shape[-2]))


def to_model_masks(model, masks: torch.Tensor | None) -> torch.Tensor | None:
    """``B×1×256×256`` mask_input logits → the size the prompt encoder takes (unchanged for SAM;
    area-resized for a model with a smaller frame)."""
    size = tuple(model.prompt_encoder.mask_input_size)
    if masks is None or tuple(masks.shape[-2:]) == size:
        return masks
    return F.interpolate(masks, size, mode="area")


def to_low_res(logits: torch.Tensor) -> torch.Tensor:
    """``B×C×h×w`` decoder logits → ``B×C×256×256`` (bilinear; unchanged when already 256²)."""
    if tuple(logits.shape[-2:]) == (LOW_RES, LOW_RES):
        return logits
    return F.interpolate(logits, (LOW_RES, LOW_RES), mode="bilinear", align_corners=False)


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


class SamGeometryEngine(PromptEngine):
    """What SAM v1 and HQ-SAM share: the 1024 frame (longest side resized, padded right and
    bottom), the decoder's IoU head, and SAM's own ``postprocess_masks`` as the official upscale."""

    @property
    def iou_head(self) -> torch.nn.Module:
        return self.model.mask_decoder.iou_prediction_head

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return resized_hw(h, w)

    @torch.inference_mode()
    def official_upscale(self, low_res: torch.Tensor, emb) -> torch.Tensor:
        if self.model.image_encoder.img_size == IMAGE_SIZE:
            return self.model.postprocess_masks(low_res.float(), tuple(emb.input_size), tuple(emb.original_size))
        # SAM's postprocess_masks in the 1024 frame (it would use the encoder's own frame)
        x = F.interpolate(low_res.float(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        x = x[..., : emb.input_size[0], : emb.input_size[1]]
        return F.interpolate(x, tuple(emb.original_size), mode="bilinear", align_corners=False)


class SamEngine(SamGeometryEngine):
    """SAM v1 with encode-once / decode-batched helpers.

    ``encoder`` picks the encoder path (:data:`ENCODER_PATHS`; ``fused_attention=False`` is the
    older spelling of ``plain``); :attr:`encoder_path` says which one runs (``fast`` falls back to
    ``fused`` on an encoder that is not segment_anything's own ``ImageEncoderViT``).
    """

    family = "sam"
    batched_encoder = True

    def __init__(self, model, name: str, checkpoint_id: str, device: torch.device | str = "cpu",
                 precision: str = "fp32", fused_attention: bool = True, encoder: str | None = None) -> None:
        super().__init__(model, name, checkpoint_id, device, precision)
        encoder = encoder or ("fast" if fused_attention else "plain")
        if encoder not in ENCODER_PATHS:
            raise ValueError(f"unknown encoder path {encoder!r}; choose one of {', '.join(ENCODER_PATHS)}")
        if encoder == "fast":
            from .sam1_fast import accelerate

            encoder = "fast" if accelerate(self.model) == "fast" else "fused"
        if encoder == "fused":
            use_fused_attention(self.model)
        self.encoder_path = encoder

    def _encode(self, x: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        return self._encode_many([x], [input_size])

    def _encode_many(self, images, sizes) -> tuple[torch.Tensor, dict]:
        # each resized, normalised and padded to the encoder's frame, then one encoder call on the stack
        x = torch.cat([encoder_input(self.model, im, size) for im, size in zip(images, sizes)])
        with self.autocast():
            feats = self.model.image_encoder(x)
        return feats, {}

    def _decode(self, emb, points, boxes, masks, multimask: bool):
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=to_model_masks(self.model, masks))
        logits, iou = self.model.mask_decoder(
            image_embeddings=emb.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return to_low_res(logits), iou


ENGINE = SamEngine
