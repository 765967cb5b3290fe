"""The ground floor of `sap`: what every stage shares, importing no stage.

One module per job — :mod:`.errors` (one-sentence input errors, per-image errors), :mod:`.io`
(atomic writes, user-given torch files), :mod:`.rle` (RLE, boxes, IoU through pycocotools),
:mod:`.coco` (COCO structure checks), :mod:`.images` (decoding, EXIF, hashing), :mod:`.config`
(defaults → file → flags, run records with versions), :mod:`.progress` (tqdm and logging),
:mod:`.points` (point conventions and derived points), :mod:`.bags` (a point's proposals),
:mod:`.cache` (the SQLite proposal-cache format), :mod:`.sapnet_format` (SAPNet's JSON format),
:mod:`.bag_sources` (bags from either), :mod:`.engines` (SAM, SAM 2.1 and HQ-SAM behind one
encode-once engine interface, their registry and checkpoints), :mod:`.device` (devices and torchrun), :mod:`.backbones` and :mod:`.resnet_fpn` (ImageNet
ResNets and the one ResNet-FPN), :mod:`.cocoeval` (COCO mask AP), :mod:`.environment` (``sap env``).

Import the modules themselves (``from pseudolabel.core.rle import encode_mask``); this package
imports nothing, so touching one light module never loads torch.
"""
