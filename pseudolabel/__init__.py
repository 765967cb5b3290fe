"""Point annotations → SAM proposals → pseudo-masks (the base the other stages import).

The public entry points, imported lazily so that ``import pseudolabel.rle`` stays cheap:

* :class:`~pseudolabel.sam.SamEngine`, :func:`~pseudolabel.sam.load_sam` — SAM, encode once,
  decode prompts in batches;
* :func:`~pseudolabel.proposals.run_proposals`, :class:`~pseudolabel.proposals.ProposalConfig`
  — the `sap proposals` stage;
* :func:`~pseudolabel.cache.load_bags`, :class:`~pseudolabel.bags.Bag` — read proposals back;
* :func:`~pseudolabel.points.derive_points`, :func:`~pseudolabel.points.collect_points` — points.
"""

from importlib import import_module

_EXPORTS = {
    "SamEngine": "sam", "load_sam": "sam", "run_proposals": "proposals", "ProposalConfig": "proposals",
    "load_bags": "cache", "Bag": "bags", "derive_points": "points", "collect_points": "points",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pseudolabel' has no attribute {name!r}")
