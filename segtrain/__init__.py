"""SOLOv2 trained on pseudo-labels (``sap train`` / ``sap predict``).

Parts, one module each (the ResNet-FPN is the core's :mod:`pseudolabel.core.resnet_fpn`): ``heads``
(instance and mask-feature branches), ``targets`` (assignment to grid cells), ``losses`` (focal,
dice, MPS), ``postprocess`` (point-NMS, maskness, matrix NMS, boxes from masks), ``model``
(composition + config, batches in passes), ``data`` (COCO → samples), ``sampling`` (which
images train together: orientation-grouped passes), ``solver``, ``checkpoint``, ``config``
(options and summary, shared by the engines), ``run_folder`` (metrics, resume checks),
``train`` (engines by name), ``engine`` (the plain PyTorch loop), ``d2`` (the detectron2 engine,
the only place detectron2 is imported) and ``predict`` (COCO results).
"""

from .config import TrainConfig, TrainSummary
from .model import SOLOv2, SOLOv2Config, build_model
from .predict import predict
from .train import ENGINE_REGISTRY, run_train

__all__ = ["ENGINE_REGISTRY", "SOLOv2", "SOLOv2Config", "TrainConfig", "TrainSummary", "build_model", "predict",
           "run_train"]
