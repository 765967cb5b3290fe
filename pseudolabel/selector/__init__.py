"""SAPNet's selection of the right SAM proposal per point (`sap select`).

Modules: :mod:`.geometry` (PDG, PPG, NPG, BMS, final choice; pure NumPy), :mod:`.losses`
(the two MIL losses), :mod:`.model` (ResNet + FPN + RoI heads), :mod:`.data` (images and bags),
:mod:`.mil` (the two stages on a batch), :mod:`.train` (training, DDP, checkpoints),
:mod:`.select` (the methods and the output file). Test and benchmark data (synthetic bags,
learnable scenes, the PSM readout) live in :mod:`pseudolabel.testing`.
"""

from .options import SelectConfig
from .select import METHODS, run_select

__all__ = ["METHODS", "SelectConfig", "run_select"]
