"""Exports to the labelling tools and readers of their files (a cross-stage tool).

One module per format, each through that ecosystem's own library where one exists:
:mod:`.labelstudio` (label-studio-converter's brush RLE), :mod:`.cvat` (cvat-sdk's mask
encoding, CVAT for images 1.1 XML), :mod:`.fiftyone_dataset` (a persistent FiftyOne dataset),
:mod:`.yolo` (YOLO-seg polygons and data.yaml), :mod:`.coco_polygons` (COCO with polygons).
:mod:`.polygons` is the pure geometry they share, :mod:`.common` the objects and the report of
what could not be represented, :mod:`.run` the registry behind ``sap export``. Heavy libraries
are imported only by the format that needs them.
"""

from .common import ExportReport
from .run import FORMATS, run_export

__all__ = ["ExportReport", "FORMATS", "run_export"]
