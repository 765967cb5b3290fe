"""Every option of `sap select`, with SAPNet's official values as defaults (ALGORITHMS.md §3).

The options named in :mod:`.reference` (``rule_*``, ``pdg_root``, ``pdg_power``, ``prm_select``)
default to ``None``: :func:`.reference.apply_reference` fills them from ``reference``
(``official`` or ``paper``) unless the configuration file sets them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class SelectConfig:
    """Resolved options of the selection stage (defaults → config file → flags)."""

    method: str = "sapnet"                 # sam-top1 | mil | sapnet
    missing: str = "fallback"              # fallback | skip: points whose image cannot be read
    seed: int = 0
    device: Optional[str] = None
    # network
    backbone: str = "resnet50"
    backbone_weights: Optional[str] = "imagenet"   # imagenet | none | PATH
    max_size: int = 1333                   # resize into max_size × min_size, aspect kept
    min_size: int = 800
    crops: str = "off"                     # off | auto | PIXELS: tiles around the points (crops.py)
    # training schedule (official: 12 epochs, 32 images/batch, lr 0.015)
    epochs: int = 12
    batch_size: int = 4                    # images per process; the lr scales with the total
    lr: float = 0.015
    lr_batch: int = 32                     # the total batch size `lr` is given for
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple[float, ...] = (8, 11)  # ×0.1 at these epochs of a 12-epoch schedule (scaled)
    flip: float = 0.5
    amp: bool = True                       # mixed precision on CUDA
    workers: int = 2
    # where checkpoints go; resume; or select with saved weights and no training
    work_dir: Optional[str] = None
    resume: bool = False
    weights: Optional[str] = None
    # SAPNet components (sapnet only; mil is PSM alone)
    pdg: bool = True
    pnpg: bool = True
    bms: bool = True
    # official code or paper, rule by rule (None: from `reference`; see reference.py)
    reference: str = "official"            # official | paper | sap
    rule_bms: Optional[str] = None         # official (float32 top-1 weighting) | paper
    rule_ppg_box: Optional[str] = None     # official (matching proposal, else the last) | paper (mined box)
    rule_mps: Optional[str] = None         # official (ranks of all proposals) | paper (of the others)
    rule_roi_align: Optional[str] = None   # official (aligned, adaptive sampling) | legacy
    rule_bn: Optional[str] = None          # official (affine trained in layers 2-4) | frozen
    rule_pdg_point: Optional[str] = None   # official (true_bbox centre when given) | paper (the point)
    rule_neg_norm: Optional[str] = None    # points (official) | negatives (paper)
    rule_mining: Optional[str] = None      # official (BMS mines any larger candidate) | scored (ours)
    rule_final: Optional[str] = None       # official (best box IoU) | scored (near-ties by score, ours)
    # numbers of the method (official code; paper values in comments)
    psm_weight: float = 0.25
    prm_weight: float = 0.25
    neg_weight: float = 0.75               # paper: L = α·pos + (1 − α)·neg, α = 0.25
    pdg_root: Optional[float] = None       # official (dx² + dy²)^0.25; paper: plain distance (0.5)
    pdg_power: Optional[float] = None      # official 1/64; paper: d = 0.015
    npg_num: int = 500
    npg_iou: float = 0.3
    npg_part_iou: float = 0.5
    npg_part_min_area: float = 64.0 * 64.0
    bms_expand_iou: float = 0.6
    bms_contain_iou: float = 0.3
    bms_slack: float = 2.0
    bms_candidates: int = 3                # BMS mines among the first 3 proposals of a bag
    prm_select: Optional[str] = None       # stage-1 selection: softmax (code) or sigmoid (paper)

    @property
    def stages(self) -> int:
        """MIL stages of the method: 1 for ``mil``, 2 for ``sapnet``."""
        return 2 if self.method == "sapnet" else 1
