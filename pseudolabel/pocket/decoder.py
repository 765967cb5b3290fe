"""SAM's ``MaskDecoder.predict_masks`` with the upscaling written as per-token matrix products.

SAM's mask upscaling is ConvTranspose(2, stride 2) → LayerNorm2d → GELU → ConvTranspose(2,
stride 2) → GELU. Both transposed convolutions have stride equal to their kernel, so every
64×64 embedding cell maps to its own 4×4 block of the 256×256 output: the whole path is a
per-cell function. Written as two matrix products on the cell's 256 channels it is the same
function of the same parameters, and on a CPU its backward pass is several times faster than
the transposed convolutions' (the pocket SAM's training time is mostly the decoder's).
``tests/test_pocket.py`` checks that it matches ``MaskDecoder.predict_masks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _upscale_tokens(decoder, tokens: torch.Tensor) -> torch.Tensor:
    """``B×N×C`` embedding cells → ``B×N×4×4×(C/8)`` upscaled features (rows then columns of
    each cell's 4×4 block)."""
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    b, n, c = tokens.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose weight (in, out, kh, kw) → (in, kh·kw·out): output laid out as (a, c, out)
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    x = (tokens @ w1).view(b, n, 2, 2, c1) + conv1.bias
    x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = (x @ w2).view(b, n, 2, 2, 2, 2, c2) + conv2.bias  # (a, c, a2, c2)
    x = act2(x)
    # block row = 2a + a2, block column = 2c + c2
    return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, n, 4, 4, c2)


def predict_masks(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same inputs and outputs as ``MaskDecoder.predict_masks``.

    Args:
        decoder: SAM's ``MaskDecoder``.
        image_embeddings: ``1×C×h×w`` (one image; C = 256, h = w = 64 in SAM).
        image_pe: ``1×C×h×w``.
        sparse_prompt_embeddings: ``B×N×C``.
        dense_prompt_embeddings: ``B×C×h×w``.

    Returns:
        ``(masks, iou_pred)``: ``B×M×4h×4w`` logits and ``B×M`` (M = all mask tokens, 4 in SAM).
    """
    nb = sparse_prompt_embeddings.size(0)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(nb, -1, -1), sparse_prompt_embeddings), dim=1)
    src = image_embeddings + dense_prompt_embeddings  # broadcasts the one image over the prompts
    pos_src = image_pe.expand(nb, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)  # src: B×hw×C
    m = decoder.num_mask_tokens
    mask_tokens_out = hs[:, 1: 1 + m, :]
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(m)], 1)
    up = _upscale_tokens(decoder, src)  # B×hw×4×4×C/8
    masks = (up.reshape(nb, h * w * 16, -1) @ hyper_in.transpose(1, 2))  # B×(hw·16)×M
    masks = masks.view(nb, h, w, 4, 4, m).permute(0, 5, 1, 3, 2, 4).reshape(nb, m, 4 * h, 4 * w)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
    return masks, iou_pred
