"""A faster forward for SAM v1's image encoder (the ``sam`` family's fast path): the same function,
fewer passes over memory.

:func:`accelerate` replaces ``forward`` of a segment_anything ``ImageEncoderViT`` (in place) with
:func:`encoder_forward`. It computes what SAM's encoder computes — patch embedding, absolute
position embedding, windowed and global blocks with decomposed relative-position bias, the neck —
to float rounding, but:

- every attention (windowed and global) runs through ``F.scaled_dot_product_attention`` with the
  relative-position bias written once into a reused buffer as its additive mask (SAM builds the
  attention matrix, adds the bias in fresh tensors, then copies it);
- windowed blocks compute qkv on the H×W tokens only and give the padding tokens qkv's bias
  (what SAM's zero padding after ``norm1`` yields), and project only the tokens they keep;
- the MLP runs on row chunks whose hidden activations stay in cache, GELU in place, and both
  residual additions accumulate into the residual stream;
- under a bf16/fp16 autocast the weights are cast once and kept (autocast casts them at every
  call); the residual stream and layer norms stay in fp32, as under autocast.

Large temporaries come from a per-call workspace so the four 4096² bias matrices of vit_b cost one
allocation, not four page-faulted ones. Shapes: input ``B×3×S×S`` (normalised, padded), output
``B×256×S/16×S/16``; tokens are ``B×H×W×C`` (row y, column x).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import types

import torch
import torch.nn.functional as F

class _Cast:
    """The encoder's weights in one dtype on one device, rebuilt when a parameter changes."""

    def __init__(self, enc, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.key = _param_key(enc)
        cast = (lambda t: t.detach()) if dtype == torch.float32 else (lambda t: t.detach().to(dtype))
        self.linear = {}
        for name, mod in enc.named_modules():
            if isinstance(mod, torch.nn.Linear):
                self.linear[name] = (cast(mod.weight), None if mod.bias is None else cast(mod.bias))
        self.patch_w = cast(enc.patch_embed.proj.weight)
        self.patch_b = cast(enc.patch_embed.proj.bias)
        self.neck = [cast(p) for p in enc.neck.parameters()]
        self.rel = {}
        for i, blk in enumerate(enc.blocks):
            if blk.attn.use_rel_pos:
                self.rel[i] = (cast(blk.attn.rel_pos_h), cast(blk.attn.rel_pos_w))
        self.tables: dict = {}  # (block, size) → the two size×size×C relative-position tables


def _param_key(enc) -> tuple | None:
    """Storage and version of every parameter; None when a version is not tracked (inference
    tensors), so that a cast copy is never reused unchecked."""
    if any(p.is_inference() for p in enc.parameters()):
        return None
    return tuple((p.data_ptr(), p._version) for p in enc.parameters())


def _weights(enc, dtype: torch.dtype) -> _Cast:
    """The weights in ``dtype``: fp32 views of the live parameters, or a cast copy kept until a
    parameter is replaced or changed in place."""
    cache = enc.__dict__.setdefault("_sap_cast", {})
    cast = cache.get(dtype)
    if cast is None or cast.key is None or cast.key != _param_key(enc):
        cast = cache[dtype] = _Cast(enc, dtype)
    return cast


def _rel_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """``size×size×C`` table ``R[i, j] = rel_pos[i - j + size - 1]`` (SAM's get_rel_pos, equal sizes)."""
    if rel_pos.shape[0] != 2 * size - 1:
        from segment_anything.modeling.image_encoder import get_rel_pos

        return get_rel_pos(size, size, rel_pos)
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + size - 1]


def _tables(wts: _Cast, i: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (i, size)
    if key not in wts.tables:
        rh, rw = wts.rel[i]
        wts.tables[key] = (_rel_table(rh, size), _rel_table(rw, size))
    return wts.tables[key]


def _bias_into(buf: torch.Tensor, q: torch.Tensor, tables, h: int, w: int) -> torch.Tensor:
    """SAM's decomposed relative-position bias of ``q`` (``N×(h·w)×C``, unscaled, any strides)
    written into ``buf`` (``N×h×w×h×w``); returns it as ``N×(h·w)×(h·w)``."""
    n, _, c = q.shape
    r_q = q.reshape(n, h, w, c)
    bh = torch.einsum("nhwc,hkc->nhwk", r_q, tables[0])
    bw = torch.einsum("nhwc,wkc->nhwk", r_q, tables[1])
    torch.add(bh[..., None], bw[..., None, :], out=buf)
    return buf.view(n, h * w, h * w)


def _global_attention(blk, wts: _Cast, i: int, y: torch.Tensor, ws: dict) -> torch.Tensor:
    """Attention of a global block on ``y`` (``B·H·W×C`` rows, normed) → ``B·H·W×C`` before proj."""
    b, h, w = ws["bhw"]
    c = y.shape[-1]
    heads = blk.attn.num_heads
    wq, bq = wts.linear[f"blocks.{i}.attn.qkv"]
    qkv = F.linear(y, wq, bq).view(b, h * w, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                         # B×heads×HW×hd views
    mask = None
    if blk.attn.use_rel_pos:
        buf = _buffer(ws, "global", (b * heads, h, w, h, w), q)
        mask = _bias_into(buf, q.reshape(b * heads, h * w, -1), _tables(wts, i, h), h, w)
        mask = mask.view(b, heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=blk.attn.scale)
    return out.transpose(1, 2).reshape(b * h * w, c)                       # free: B×HW×heads×hd


def _window_index(ws: dict, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices that gather tokens into windows (the last row, ``B·H·W``, is the padding
    token) and back (each token's row in window order)."""
    b, h, w = ws["bhw"]
    key = ("win", s, device)
    if key not in ws:
        hp, wp = -(-h // s) * s, -(-w // s) * s
        y = torch.arange(hp, device=device).view(hp, 1).expand(hp, wp)
        x = torch.arange(wp, device=device).view(1, wp).expand(hp, wp)
        tok = torch.where((y < h) & (x < w), y * w + x, -1)                    # Hp×Wp
        tok = tok.view(hp // s, s, wp // s, s).permute(0, 2, 1, 3).reshape(-1)  # window order
        img = torch.arange(b, device=device).view(b, 1) * (h * w)
        fwd = torch.where(tok >= 0, img + tok, b * h * w).reshape(-1)
        inv = torch.empty(b * h * w, dtype=torch.long, device=device)
        slots = torch.arange(fwd.numel(), device=device)
        real = fwd < b * h * w
        inv[fwd[real]] = slots[real]
        ws[key] = (fwd, inv)
    return ws[key]


def _window_attention(blk, wts: _Cast, i: int, y: torch.Tensor, ws: dict) -> torch.Tensor:
    """Attention of a windowed block on ``y`` (``B·H·W×C`` rows, normed) → ``B·H·W×C`` before proj.

    SAM pads the normed tokens with zeros to a multiple of the window, so the padding tokens'
    q, k, v are qkv's bias: qkv runs on the real tokens, one extra row holds the bias, and one
    gather puts every window's tokens (padding included) together.
    """
    c = y.shape[-1]
    s = blk.window_size
    heads, hd = blk.attn.num_heads, c // blk.attn.num_heads
    fwd, inv = _window_index(ws, s, y.device)
    wq, bq = wts.linear[f"blocks.{i}.attn.qkv"]
    rows = torch.empty(y.shape[0] + 1, 3 * c, dtype=y.dtype, device=y.device)
    if bq is None:
        torch.mm(y, wq.t(), out=rows[:-1])
        rows[-1].zero_()
    else:
        torch.addmm(bq, y, wq.t(), out=rows[:-1])
        rows[-1].copy_(bq)
    win = rows.index_select(0, fwd).view(-1, s * s, 3, heads, hd)             # windows×s²×3×heads×hd
    q, k, v = win.permute(2, 0, 3, 1, 4).unbind(0)                          # windows×heads×s²×hd views
    mask = None
    if blk.attn.use_rel_pos:
        n = q.shape[0] * heads
        buf = _buffer(ws, "window", (n, s, s, s, s), q)
        mask = _bias_into(buf, q.reshape(n, s * s, hd), _tables(wts, i, s), s, s)
        mask = mask.view(q.shape[0], heads, s * s, s * s)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=blk.attn.scale)
    out = out.transpose(1, 2).reshape(-1, c)                                # window order
    return out.index_select(0, inv)


def _buffer(ws: dict, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    buf = ws.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype:
        buf = ws[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def _linear_into(t: torch.Tensor, a: torch.Tensor, wb: tuple) -> None:
    """``t += a @ W.T + b`` (``t``: rows×C fp32; ``a`` in the compute dtype)."""
    w, b = wb
    if a.dtype == t.dtype:
        t.addmm_(a, w.t())
        if b is not None:
            t.add_(b)
    else:
        t.add_(F.linear(a, w, b))


def encoder_forward(enc, x: torch.Tensor) -> torch.Tensor:
    """SAM's ``ImageEncoderViT.forward`` on ``x`` (``B×3×S×S``) → ``B×256×S/16×S/16`` (see module doc).

    Under an enabled CPU/CUDA autocast to bf16 or fp16 the encoder computes in that dtype with
    weights cast once; otherwise in the input's dtype.
    """
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    wts = _weights(enc, dtype)
    with torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext():
        t = _patch_embed(enc, wts, x.to(dtype)).float()
        t = t + enc.pos_embed if enc.pos_embed is not None else t.contiguous()
        b, h, w, c = t.shape
        ws: dict = {"bhw": (b, h, w)}
        t = t.view(b * h * w, c)
        for i, blk in enumerate(enc.blocks):
            n1, n2 = blk.norm1, blk.norm2
            y = F.layer_norm(t, n1.normalized_shape, n1.weight, n1.bias, n1.eps).to(dtype)
            att = (_window_attention if blk.window_size > 0 else _global_attention)(blk, wts, i, y, ws)
            del y
            _linear_into(t, att, wts.linear[f"blocks.{i}.attn.proj"])
            del att
            y = F.layer_norm(t, n2.normalized_shape, n2.weight, n2.bias, n2.eps).to(dtype)
            hid = torch.ops.aten.gelu_(F.linear(y, *wts.linear[f"blocks.{i}.mlp.lin1"]))
            del y
            _linear_into(t, hid, wts.linear[f"blocks.{i}.mlp.lin2"])
            del hid
        ws.clear()
        return _neck(enc, wts, t.view(b, h, w, c), dtype)


def _patch_embed(enc, wts: _Cast, x: torch.Tensor) -> torch.Tensor:
    """SAM's patch embedding (a conv with stride = kernel, no padding) as one GEMM over the
    flattened patches: ``B×3×S×S`` → ``B×S/p×S/p×C``; other convs go through ``conv2d``."""
    conv = enc.patch_embed.proj
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    b, cin, hh, ww = x.shape
    if (kh, kw) != (sh, sw) or conv.padding != (0, 0) or hh % kh or ww % kw:
        t = F.conv2d(x, wts.patch_w, wts.patch_b, stride=conv.stride, padding=conv.padding)
        return t.permute(0, 2, 3, 1)
    h, w = hh // kh, ww // kw
    patches = x.view(b, cin, h, kh, w, kw).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, cin * kh * kw)
    return F.linear(patches, wts.patch_w.flatten(1), wts.patch_b).view(b, h, w, -1)


def _neck(enc, wts: _Cast, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """conv1×1 → LayerNorm2d → conv3×3 → LayerNorm2d on ``B×H×W×C`` tokens → ``B×256×H×W`` fp32."""
    c1, n1w, n1b, c2, n2w, n2b = wts.neck
    ln1, ln2 = enc.neck[1], enc.neck[3]
    y = F.linear(t.to(dtype), c1.flatten(1))                               # 1×1 conv, channels last
    y = F.layer_norm(y.float(), y.shape[-1:], n1w.float(), n1b.float(), ln1.eps).to(dtype)
    y = F.conv2d(y.permute(0, 3, 1, 2), c2, padding=enc.neck[2].padding)   # channels-last input
    y = F.layer_norm(y.permute(0, 2, 3, 1).float(), y.shape[1:2], n2w.float(), n2b.float(), ln2.eps)
    return y.permute(0, 3, 1, 2).contiguous()


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing large blocks back to the OS.

    glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it on free, so each
    image page-faults the encoder's large temporaries (vit_b: the 805 MB bias buffer, 50 MB MLP
    activations) in again; the kernel zeroing those pages cost ~20 % of the encoder on our
    2-core CPU (15.9 vs 20.3 s on a 3-block vit_b slice). Afterwards the heap keeps them: peak
    RSS is unchanged, RSS just no longer falls between images. Process-wide, Linux/glibc only;
    ``SAP_KEEP_FREED_MEMORY=0`` turns it off. Returns whether it was applied.
    """
    if os.environ.get("SAP_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def accelerate(model) -> str:
    """Switch ``model.image_encoder`` to :func:`encoder_forward` (in place) when it is
    segment_anything's own ``ImageEncoderViT``, and on a CPU keep freed memory
    (:func:`keep_freed_memory`). Returns ``"fast"``, or ``"plain"`` for other encoders (HQ-SAM's
    returns intermediate features too), which are left alone."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    enc = model.image_encoder
    if type(enc) is not ImageEncoderViT:
        return "plain"
    enc.forward = types.MethodType(encoder_forward, enc)
    if next(enc.parameters()).device.type == "cpu":
        keep_freed_memory()
    return "fast"

