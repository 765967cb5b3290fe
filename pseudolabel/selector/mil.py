"""SAPNet's two MIL stages on a batch: losses for training, choices for selection.

Stage 0 (PSM) scores each point's SAM proposals; its top-1 (mined by BMS) is rescaled by PPG
into the stage-1 bag; stage 1 (PRM) learns against PPG's positives and NPG's negatives; the
stage-1 top-1, mined by BMS, picks the final mask by box IoU. With one stage (the ``mil``
method) the PSM top-1 is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from pseudolabel.selector import geometry as geo
from . import official
from .data import Sample
from .losses import negative_loss, prm_loss, proposal_scores, psm_loss
from .model import SelectorNet
from .options import SelectConfig
from .reference import FINAL_NEAR, MINING_SHARE, apply_reference


@dataclass
class PointChoice:
    """What the selector chose for one point.

    Attributes:
        ann_id: the point's annotation id.
        index: the chosen proposal (index into the bag).
        score: class probability at the point's label of the final stage's top-1 box.
        order: the bag's proposals ranked by the final stage's ``cls × ins`` score, best first.
        bms: the last BMS branch of the final stage (``expand``, ``contain``, ``none``).
        margin: confidence of the choice, in ``[0, 1]``: the final stage's share of ``cls × ins``
            (normalised over its bag) of the top-1 box minus that of the best box that would have
            led to another mask (see :func:`choice_margin`).
        stages: proposal index (into the bag) each stage points at: ``psm`` (stage-0 top-1),
            and for two stages ``psm_bms`` (the stage-0 box after BMS) and ``prm`` (the stage-1
            top-1 box, before BMS), each matched to the bag by box IoU like the final choice.
    """

    ann_id: int
    index: int
    score: float
    order: list[int]
    bms: str = "none"
    margin: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)


def choice_margin(scores: np.ndarray, leads_to: Callable[[int], int], winner: int) -> float:
    """Margin between the top-1 box and the runner-up, the best box that leads to another mask.

    Args:
        scores: ``N`` final-stage scores (``cls × ins``, ≥ 0) of the boxes of one bag.
        leads_to: box index → the proposal (mask) the method would answer if that box were its
            top-1; called lazily, best boxes first, until one leads elsewhere.
        winner: the top-1 box.

    Returns:
        ``(s[winner] − s[runner-up]) / Σ s`` in ``[0, 1]``; the top-1's whole share when every
        box leads to the same mask; 0 when every score is 0.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    total = scores.sum()
    if total <= 0:
        return 0.0
    target = leads_to(winner)
    for j in np.argsort(-scores, kind="stable"):
        if j != winner and leads_to(int(j)) != target:
            return float((scores[winner] - scores[j]) / total)
    return float(scores[winner] / total)


def _dense_index(sizes: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``P×Kmax`` row indices (padding → the extra row ``Σ sizes``) and the valid mask."""
    kmax = max(sizes)
    total = sum(sizes)
    index = torch.full((len(sizes), kmax), total, dtype=torch.long)
    valid = torch.zeros(len(sizes), kmax, dtype=torch.bool)
    start = 0
    for p, k in enumerate(sizes):
        index[p, :k] = torch.arange(start, start + k)
        valid[p, :k] = True
        start += k
    return index.to(device), valid.to(device)


def _dense(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``R×C`` → ``P×K×C`` by ``index`` (padding rows are zeros)."""
    return torch.cat([rows, rows.new_zeros(1, rows.shape[1])])[index]


def _pad(arrays: list[np.ndarray], kmax: int, fill: float, device: torch.device) -> torch.Tensor:
    out = np.full((len(arrays), kmax), fill, dtype=np.float32)
    for p, a in enumerate(arrays):
        out[p, : len(a)] = a
    return torch.from_numpy(out).to(device)


def _boxes_per_image(samples: list[Sample], per_point: list[np.ndarray],
                     device: torch.device) -> list[torch.Tensor]:
    out, p = [], 0
    for s in samples:
        n = len(s.boxes)
        boxes = np.concatenate(per_point[p:p + n]) if n else np.zeros((0, 4))
        out.append(torch.as_tensor(boxes, dtype=torch.float32, device=device))
        p += n
    return out


@dataclass
class _Stage0:
    """What stage 0 hands on, in point order: labels ``P``, proposal bags, resized ``(h, w)`` of
    each point's image, shared features ``x`` of the proposals, ``P×K`` scores and class
    probabilities at the label, the top-1 index, the bag score at the label (stage 1's label
    weights), PDG scores per bag, and the losses so far."""

    labels: torch.Tensor
    bags: list[np.ndarray]
    img_hw: list[tuple[int, int]]
    x: torch.Tensor
    score: torch.Tensor
    clsat: torch.Tensor
    winner: np.ndarray
    label_weights: torch.Tensor
    pdg: list[np.ndarray]
    losses: dict[str, torch.Tensor]


class SelectorStep(nn.Module):
    """The selector network plus the MIL logic; ``forward`` is one training or selection step.

    Wrapping both in one module lets DistributedDataParallel see the whole step as its forward.
    The rules where the official code and the paper differ come from ``cfg`` after
    :func:`.reference.apply_reference` (applied on assignment).
    """

    def __init__(self, net: SelectorNet, cfg: SelectConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg

    @property
    def cfg(self) -> SelectConfig:
        """The options, every rule resolved (assigning a config applies its reference)."""
        return self._cfg

    @cfg.setter
    def cfg(self, value: SelectConfig) -> None:
        self._cfg = apply_reference(value)

    def forward(self, images: torch.Tensor, samples: list[Sample], train: bool = True,
                rng: np.random.Generator | None = None, trace: dict | None = None):
        """Run the stages on a batch.

        Args:
            images: ``B×3×H×W`` (padded, normalised) for the B samples.
            samples: the readable samples of the batch, in the order of ``images``.
            train: return losses (True) or choices (False).
            rng: random source of NPG (training only).
            trace: when a dict, filled with the intermediate values (scores, PDG factors, top-1
                and mined boxes, PPG bags, NPG boxes) in point order, for tests and diagnosis.

        Returns:
            ``dict[str, Tensor]`` of losses when training, else ``list[PointChoice]`` in the
            order of the samples' points.
        """
        if not samples:  # keeps every rank's step alike when a whole batch failed to load
            zero = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
            return {"empty": zero} if train else []
        feats = self.net.features(images)
        hw = [(int(images.shape[-2]), int(images.shape[-1]))] * len(samples)
        s0 = self._psm(feats, samples, hw, images.device, train, trace)
        if self.net.stages == 1:
            if train:
                return s0.losses
            return self._choices(samples, s0.bags, s0.winner, s0.score, s0.clsat, [None] * len(s0.bags))
        return self._prm(feats, samples, hw, s0, train, rng, trace)

    def _psm(self, feats, samples: list[Sample], hw: list[tuple[int, int]], device: torch.device, train: bool,
             trace: dict | None) -> "_Stage0":
        """Stage 0 (PSM) over the SAM proposals: scores, top-1, PDG and (training) its loss."""
        cfg = self.cfg
        labels = torch.as_tensor(np.concatenate([s.labels for s in samples]), device=device)
        bags = [b for s in samples for b in s.boxes]
        sizes = [len(b) for s in samples for b in s.boxes]
        x0 = self.net.box_features(feats, _boxes_per_image(samples, bags, device), hw)
        cls0, ins0 = self.net.box_logits(x0, 0)
        index0, valid0 = _dense_index(sizes, device)
        cls0, ins0 = _dense(cls0, index0), _dense(ins0, index0)
        with torch.no_grad():
            score0, clsat0 = proposal_scores(cls0, ins0, valid0, labels, "softmax")
        winner0 = score0.argmax(dim=1).cpu().numpy()
        pdg = [a for s in samples
               for a in geo.image_pdg_scores(self._pdg_points(s), s.labels, s.boxes, cfg.pdg_root)]
        if trace is not None:
            trace["score0"] = score0.float().cpu().numpy()
        losses: dict[str, torch.Tensor] = {}
        if train:
            factor = None
            if cfg.pdg and self.net.stages == 2:
                factor = _pad([geo.pdg_penalty(a, cfg.pdg_power) for a in pdg], valid0.shape[1], 1.0, device)
                if trace is not None:
                    trace["pdg_factor"] = factor.cpu().numpy()
            losses["psm"] = psm_loss(cls0, ins0, valid0, labels, factor, cfg.psm_weight)
        return _Stage0(labels, bags, [s.hw for s in samples for _ in s.boxes], x0, score0, clsat0, winner0,
                       score0.sum(dim=1), pdg, losses)

    def _prm(self, feats, samples: list[Sample], hw: list[tuple[int, int]], s0: "_Stage0", train: bool,
             rng: np.random.Generator | None, trace: dict | None):
        """Stage 1 (PRM) over PPG's bags: its losses (with NPG's negatives), or the choices."""
        cfg, keep, bags, img_hw = self.cfg, trace is not None, s0.bags, s0.img_hw
        best0 = s0.score.max(dim=1).values.float().cpu()  # one device sync for the batch
        top0 = [self._top1(b[s0.winner[p]], best0[p], img_hw[p]) for p, b in enumerate(bags)]
        rows0 = self._rows(s0.score)
        pseudo0 = [self._bms(box, b, rows0[p], best0[p])[0] if cfg.bms else box
                   for p, (box, b) in enumerate(zip(top0, bags))]
        if keep:
            trace["top1_0"], trace["mined_0"] = np.array(top0), np.array(pseudo0)
        bags1 = ([self._ppg(b, pseudo0[p], s0.pdg[p], s0.winner[p]) for p, b in enumerate(bags)]
                 if cfg.pnpg else bags)
        if keep:
            trace["bags1"] = np.concatenate(bags1)
        cls1, ins1 = self.net.box_logits(self._stage1_features(feats, samples, bags, bags1, s0.x, hw), 1)
        index1, valid1 = _dense_index([len(b) for b in bags1], s0.x.device)
        cls1, ins1 = _dense(cls1, index1), _dense(ins1, index1)
        if train:
            losses = dict(s0.losses)
            losses["prm"] = prm_loss(cls1, ins1, valid1, s0.labels, s0.label_weights, cfg.prm_weight)
            if cfg.pnpg:
                losses["neg"] = self._negative_loss(feats, samples, hw, s0, rng, trace)
            return losses
        score1, clsat1 = proposal_scores(cls1, ins1, valid1, s0.labels, cfg.prm_select)
        winner1 = score1.argmax(dim=1).cpu().numpy()
        if keep:
            trace["score1"] = score1.float().cpu().numpy()
        pseudo1, top1 = [], []
        best1 = score1.max(dim=1).values.float().cpu()
        rows1 = self._rows(score1)
        for p, b in enumerate(bags1):
            box = self._top1(b[winner1[p]], best1[p], img_hw[p])
            top1.append(box)
            branch = "none"
            if cfg.bms:
                box, branch = self._bms(box, bags[p], rows1[p], best1[p])
            pseudo1.append((box, branch))
        if keep:
            trace["top1_1"], trace["mined_1"] = np.array(top1), np.array([m for m, _ in pseudo1])
        return self._choices(samples, bags, winner1, score1, clsat1, pseudo1, cfg.rule_bms == "official",
                             stage0=(s0.winner, pseudo0, bags1, img_hw))

    def _negative_loss(self, feats, samples: list[Sample], hw: list[tuple[int, int]], s0: "_Stage0",
                       rng: np.random.Generator | None, trace: dict | None) -> torch.Tensor:
        """NPG's negatives of every image (random boxes away from the proposals, halves of the
        stage-0 winners) and their stage-1 loss."""
        cfg = self.cfg
        negs, p = [], 0
        rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        for s in samples:
            n = len(s.boxes)
            winners = np.array([s0.bags[q][s0.winner[q]] for q in range(p, p + n)]).reshape(-1, 4)
            neg = geo.npg_boxes(s.hw[1], s.hw[0], np.concatenate(s.boxes), winners, rng,
                                cfg.npg_num, cfg.npg_iou, cfg.npg_part_iou, cfg.npg_part_min_area)
            negs.append(torch.as_tensor(neg, dtype=torch.float32, device=s0.x.device))
            p += n
        if trace is not None:
            trace["negs"] = [n.cpu().numpy() for n in negs]
        neg_cls, _ = self.net.forward_boxes(feats, negs, hw, stage=1)
        return negative_loss(neg_cls, len(s0.bags), s0.label_weights, cfg.neg_weight, cfg.rule_neg_norm)

    def _stage1_features(self, feats, samples: list[Sample], bags: list[np.ndarray], bags1: list[np.ndarray],
                         x0: torch.Tensor, hw: list[tuple[int, int]]) -> torch.Tensor:
        """Shared features of the stage-1 bags, in their point-major order. A stage-1 bag starts
        with its point's proposals (PPG keeps them first): their stage-0 rows of ``x0`` are reused
        and only the boxes PPG added are pooled. The official code pools the whole bag again; the
        values are the same, and a sapnet step pools ~15 % fewer boxes."""
        reuse = [len(b1) >= len(b) and np.array_equal(b1[: len(b)], b) for b, b1 in zip(bags, bags1)]
        new = [b1[len(b):] if r else b1 for b, b1, r in zip(bags, bags1, reuse)]
        if not any(len(n) for n in new):
            return x0
        xn = self.net.box_features(feats, _boxes_per_image(samples, new, x0.device), hw)
        off0 = np.concatenate([[0], np.cumsum([len(b) for b in bags])])
        offn = len(x0) + np.concatenate([[0], np.cumsum([len(n) for n in new])])
        rows = [np.arange(off0[p], off0[p + 1]) if r else np.zeros(0, dtype=np.int64)
                for p, r in enumerate(reuse)]
        rows = np.concatenate([np.concatenate([r0, np.arange(offn[p], offn[p + 1])]) for p, r0 in enumerate(rows)])
        return torch.cat([x0, xn])[torch.as_tensor(rows, dtype=torch.long, device=x0.device)]

    def _pdg_points(self, s: Sample) -> np.ndarray:
        """PDG's points: the centres of ``true_bbox`` where given (official rule), else the points."""
        if self.cfg.rule_pdg_point != "official" or s.true_centres is None:
            return s.points
        return np.where(np.isnan(s.true_centres), s.points, s.true_centres)

    def _top1(self, proposal: np.ndarray, score: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
        """A stage's top-1 box before BMS (official: float32 ``s / (s + 1e-8)`` weighting)."""
        if self.cfg.rule_bms == "official":
            return official.top1_box(proposal, score, hw[1], hw[0]).numpy()
        return geo.clamp_box(proposal, hw[1], hw[0])

    def _rows(self, score: torch.Tensor) -> list:
        """Per-bag stage scores as NumPy rows where a rule of ours reads them, else Nones."""
        if self.cfg.rule_mining == "official" and self.cfg.rule_final == "official":
            return [None] * len(score)
        return list(score.float().cpu().numpy())

    def _bms(self, box: np.ndarray, bag: np.ndarray, scores: np.ndarray | None = None,
             top: float | torch.Tensor | None = None) -> tuple[np.ndarray, str]:
        """BMS of a top-1 box among the bag's first proposals; ``scores`` (the stage's, one per
        row of its bag, which starts with ``bag``) and the top-1's score ``top`` gate the
        candidates under ``rule_mining: scored``."""
        cfg = self.cfg
        cands = bag[: cfg.bms_candidates]
        minable = None
        if cfg.rule_mining == "scored" and scores is not None:
            minable = scores[: len(cands)] >= MINING_SHARE * float(top)
        if cfg.rule_bms == "official":
            mined, branch = official.bms(torch.as_tensor(box, dtype=torch.float32), cands, cfg.bms_expand_iou,
                                         cfg.bms_contain_iou, cfg.bms_slack, minable)
            return mined.numpy(), branch
        return geo.bms(box, cands, cfg.bms_expand_iou, cfg.bms_contain_iou, cfg.bms_slack, minable)

    def _ppg(self, proposals: np.ndarray, mined: np.ndarray, pdg: np.ndarray, winner: int) -> np.ndarray:
        """PPG's bag: official rescales the proposal matching the mined box (else the last one),
        the paper the mined box b* itself; the growth/shrink follows that box's PDG score."""
        if self.cfg.rule_ppg_box == "official":
            j = official.ppg_source_index(proposals, mined)
            return geo.ppg_boxes(proposals, proposals[j], pdg[j])
        return geo.ppg_boxes(proposals, mined, pdg[winner])

    def _final(self, bag: np.ndarray, box: np.ndarray, float32: bool, scores: np.ndarray | None = None) -> int:
        """The proposal of ``bag`` whose box matches ``box`` best (official: in float32); under
        ``rule_final: scored`` with ``scores`` (one per proposal), near-ties go to the best score."""
        if self.cfg.rule_final == "scored" and scores is not None:
            return geo.scored_final_index(bag, box, scores, FINAL_NEAR)
        return official.final_index(bag, box) if float32 else geo.final_mask_index(bag, box)

    def _choices(self, samples: list[Sample], bags: list[np.ndarray], winner: np.ndarray, score: torch.Tensor,
                 clsat: torch.Tensor, mined: list, float32: bool = False, stage0: tuple | None = None
                 ) -> list[PointChoice]:
        """The final choices. One stage (``mined[p]`` None): the top-1 proposal itself. Two stages:
        ``mined[p]`` is the stage-1 top-1 box after BMS and its branch, which picks the proposal
        whose box matches it best; ``stage0`` is ``(winner0, pseudo0, bags1, img_hw)``: the
        stage-0 top-1, its mined box, the stage-1 bags and the resized image sizes, for the
        margin (every other stage-1 box taken through the same path) and the per-stage top-1."""
        ann_ids = [a for s in samples for a in s.ann_ids]
        score = score.float().cpu().numpy()
        clsat = clsat.float().cpu().numpy()
        out = []
        for p, b in enumerate(bags):
            k, w = len(b), int(winner[p])
            order = [int(i) for i in np.argsort(-score[p, :k], kind="stable")]
            if mined[p] is None:  # one stage: the top-1 proposal itself
                margin = choice_margin(score[p, :k], lambda j: j, w)
                out.append(PointChoice(ann_ids[p], w, float(clsat[p, w]), order, "none", margin, {"psm": w}))
                continue
            box, branch = mined[p]
            index = self._final(b, box, float32, score[p, :k])
            winner0, pseudo0, bags1, img_hw = stage0
            b1, hw = bags1[p], img_hw[p]
            leads = {w: index}

            def leads_to(j: int, b=b, b1=b1, hw=hw, p=p, leads=leads) -> int:
                if j not in leads:
                    other = self._top1(b1[j], torch.as_tensor(score[p, j]), hw)
                    if self.cfg.bms:
                        other = self._bms(other, b, score[p], score[p, j])[0]
                    leads[j] = self._final(b, other, float32, score[p, :k])
                return leads[j]

            margin = choice_margin(score[p, :len(b1)], leads_to, w)
            stages = {"psm": int(winner0[p]), "psm_bms": self._final(b, pseudo0[p], float32),
                      "prm": self._final(b, self._top1(b1[w], torch.as_tensor(score[p, w]), hw), float32)}
            out.append(PointChoice(ann_ids[p], index, float(clsat[p, w]), order, branch, margin, stages))
        return out


@torch.no_grad()
def psm_outputs(step: SelectorStep, samples: list[Sample], images: torch.Tensor,
                image_hw: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PSM's (stage 0) raw outputs on one batch, one row per point, on the CPU.

    Args:
        step: the selector (its ``net`` is run as is: call ``step.eval()`` first).
        samples, images, image_hw: a collated batch (:func:`.data.collate`), ``images`` ``B×3×H×W``.

    Returns:
        ``(cls, ins, valid)``: class logits ``P×K×(C+1)``, instance logits ``P×K×C`` (``P`` the
        batch's points in sample order, ``K`` the largest bag; padding rows zeros) and the ``P×K``
        bool mask of real proposals.
    """
    bags = [b for s in samples for b in s.boxes]
    cpu = torch.device("cpu")
    feats = step.net.features(images)
    cls, ins = step.net.forward_boxes(feats, _boxes_per_image(samples, bags, cpu), image_hw, stage=0)
    index, valid = _dense_index([len(b) for b in bags], cpu)
    return _dense(cls, index), _dense(ins, index), valid
