"""HQ-SAM (the ``segment_anything_hq`` package): :class:`HqEngine`.

Networks come from the package's own builders (``vit_h``/``vit_l``/``vit_b``, Light HQ-SAM's
``vit_tiny``, and ``tiny``, the ViT builder at SAM v1's test width) with random weights; the
release format is the bare state dict. Image preprocessing is SAM v1's (resize the longest side
to 1024, normalise, pad).

At encoding, the decoder's fusion of the first global-attention block's ViT features with the
embedding (``embedding_encoder(embed) + compress_vit_feat(vit)``) is computed once and kept as
``hq_features`` (``1×32×256×256``); HQ-SAM computes the same map inside every decoder call.

Outputs. HQ-SAM's decoder predicts SAM's four mask tokens and the HQ token. Its own predictor,
asked for multimask output, returns ONE mask: the SAM multimask output with the highest
predicted IoU plus the HQ token's logits, scored by that IoU. To keep 3 outputs per prompt (and
SAPNet's 6-proposal bags) this engine returns, for each SAM multimask token ``k``, its logits
plus the HQ logits, scored by token ``k``'s predicted IoU: the highest-scored of the three is
exactly HQ-SAM's own answer (and what SAMRefiner's HQ-SAM mode keeps). ``multimask=False``
gives HQ-SAM's single output (token 0 plus HQ).
"""

from __future__ import annotations

import torch

from .sam1 import SamGeometryEngine, resize_longest_side

STRICT_UNEXPECTED = False  # HQ-SAM's own builder loads non-strictly: extra keys only warn


def build(spec) -> torch.nn.Module:
    """HQ-SAM of ``spec.arch`` with the current RNG's random weights."""
    import importlib

    hq = importlib.import_module("segment_anything_hq.build_sam")  # the package exports a same-named function

    if spec.arch == "tiny":  # the package's ViT builder at SAM v1's test width (tests)
        return hq._build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                             encoder_global_attn_indexes=[1])
    return hq.sam_model_registry[spec.arch](checkpoint=None)


def release_format(state: dict) -> dict:
    """HQ-SAM's checkpoints are the bare state dict."""
    return state


class HqEngine(SamGeometryEngine):
    """HQ-SAM with cached HQ features and 3 outputs per prompt (see the module docstring)."""

    family = "hq"

    def _encode(self, x: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        x = self.model.preprocess(resize_longest_side(x, input_size))
        dec = self.model.mask_decoder
        with self.autocast():
            feats, interm = self.model.image_encoder(x)
            vit = interm[0].permute(0, 3, 1, 2)  # after the first global-attention block
            hq_features = dec.embedding_encoder(feats) + dec.compress_vit_feat(vit)
        return feats, {"hq_features": hq_features}

    def _decode(self, emb, points, boxes, masks, multimask: bool):
        m = self.model
        sparse, dense = m.prompt_encoder(points=points, boxes=boxes, masks=masks)
        logits, iou = m.mask_decoder.predict_masks(
            image_embeddings=emb.features,
            image_pe=m.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            hq_features=emb.extras["hq_features"],
        )
        hq = logits[:, -1:]  # the HQ token, added to SAM's outputs as HQ-SAM does
        if multimask:
            return logits[:, 1:4] + hq, iou[:, 1:4]
        return logits[:, 0:1] + hq, iou[:, 0:1]


ENGINE = HqEngine
