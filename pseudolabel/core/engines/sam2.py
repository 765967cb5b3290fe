"""SAM 2.1 (the ``sam2`` package) for single images: :class:`Sam2Engine`.

Networks are built from the package's own Hydra configs (``configs/sam2.1/sam2.1_hiera_*.yaml``)
with ``build_sam2``'s image-predictor settings (dynamic multimask via stability for single-mask
output) and random weights; weights then come through :func:`~.loading.load_model` from the
release format ``{"model": state_dict}``.

The steps are those of ``SAM2ImagePredictor``: the image is stretched to 1024×1024 (bilinear with
antialiasing on 0..1 floats) and normalised with ImageNet's mean and std; the encoder's three
FPN levels pass through the decoder's ``conv_s0``/``conv_s1``, the coarsest gets the no-memory
embedding added, and the two finer ones are kept as ``high_res_s0`` (32×256×256) and
``high_res_s1`` (64×128×128) for the decoder. A box prompt is two corner points with labels 2
and 3 placed before the click points. Logits are not clamped (the predictor clamps only the
copy it returns for re-prompting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import IMAGE_SIZE, PromptEngine

STRICT_UNEXPECTED = True
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build(spec) -> torch.nn.Module:
    """SAM 2.1 of config ``spec.arch`` with the current RNG's random weights, on the CPU."""
    from sam2.build_sam import build_sam2

    return build_sam2(spec.arch, ckpt_path=None, device="cpu", mode="eval")


def release_format(state: dict) -> dict:
    """SAM 2's checkpoints hold the state dict under ``"model"``."""
    return {"model": state}


class Sam2Engine(PromptEngine):
    """SAM 2.1's image path: encode once, decode batched prompts."""

    family = "sam2"

    def __init__(self, model, name: str, checkpoint_id: str, device: torch.device | str = "cpu",
                 precision: str = "fp32") -> None:
        super().__init__(model, name, checkpoint_id, device, precision)
        if self.model.image_size != IMAGE_SIZE:
            raise ValueError(f"SAM 2 models with image_size {self.model.image_size} are not supported")
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(MEAN, device=self.device).view(shape)
        self._std = torch.tensor(STD, device=self.device).view(shape)

    @property
    def iou_head(self) -> torch.nn.Module:
        return self.model.sam_mask_decoder.iou_prediction_head

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return IMAGE_SIZE, IMAGE_SIZE

    def _encode(self, x: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        x = F.interpolate(x / 255.0, input_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        m = self.model
        with self.autocast():
            backbone_out = m.forward_image(x)
            _, feats, _, sizes = m._prepare_backbone_features(backbone_out)
        if m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + m.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *hw) for f, hw in zip(feats, sizes)]
        return maps[-1], {"high_res_s0": maps[0], "high_res_s1": maps[1]}

    def _decode(self, emb, points, boxes, masks, multimask: bool):
        m = self.model
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int64, device=boxes.device).expand(len(corners), 2)
            if points is not None:
                points = (torch.cat([corners, points[0]], 1), torch.cat([labels, points[1].long()], 1))
            else:
                points = (corners, labels)
        sparse, dense = m.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        high_res = [emb.extras["high_res_s0"], emb.extras["high_res_s1"]]
        low_res, iou, _, _ = m.sam_mask_decoder(
            image_embeddings=emb.features,
            image_pe=m.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,
            high_res_features=high_res,
        )
        return low_res, iou


ENGINE = Sam2Engine
