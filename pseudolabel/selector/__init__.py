"""SAPNet's selection of the right SAM proposal per point (`sap select`).

Modules: :mod:`.geometry` (PDG, PPG, NPG, BMS, final choice; pure NumPy), :mod:`.losses`
(the two MIL losses), :mod:`.model` (ResNet + FPN + RoI heads), :mod:`.data` (images and bags),
:mod:`.mil` (the two stages on a batch), :mod:`.train` (training, DDP, checkpoints),
:mod:`.select` (the methods and the output file), :mod:`.synthetic` (bags from ground truth),
:mod:`.scenes` (learnable scenes), :mod:`.readout` (what a trained PSM says per proposal).
"""

from .options import SelectConfig
from .select import METHODS, run_select

__all__ = ["METHODS", "SelectConfig", "run_select"]
