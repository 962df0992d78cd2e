"""The official model zoo (the paper's and the official README's tables), by config: the one
place in the project that holds the official figures."""
from typing import Dict, NamedTuple

__all__ = ["OfficialRow", "OFFICIAL_MODEL_ZOO", "official_row"]


class OfficialRow(NamedTuple):
    config: str                # this project's yacs config under configs/ (the .py twin beside it)
    name: str
    params_m: float            # Params (M), as the official table prints them
    flops_g: float             # FLOPs (G, multiply-adds), as the official table prints them
    metrics: Dict[str, float]  # the accuracy columns (top-1/top-5, box/mask AP, mIoU)


OFFICIAL_MODEL_ZOO = (
    OfficialRow("ImageNet-Classification/rednet26.yaml", "RedNet-26", 9.23, 1.73,
                {"top1": 75.96, "top5": 93.19}),
    OfficialRow("ImageNet-Classification/rednet38.yaml", "RedNet-38", 12.39, 2.22,
                {"top1": 77.48, "top5": 93.57}),
    OfficialRow("ImageNet-Classification/rednet50.yaml", "RedNet-50", 15.54, 2.71,
                {"top1": 78.35, "top5": 94.13}),
    OfficialRow("ImageNet-Classification/rednet101.yaml", "RedNet-101", 25.65, 4.74,
                {"top1": 78.92, "top5": 94.35}),
    OfficialRow("ImageNet-Classification/rednet152.yaml", "RedNet-152", 33.99, 6.79,
                {"top1": 79.12, "top5": 94.38}),
    OfficialRow("COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml",
                "Faster R-CNN, conv neck, conv head", 31.6, 177.9, {"box AP": 39.5}),
    OfficialRow("COCO-Detection/faster_rcnn_rednet50_invfpn_1x.yaml",
                "Faster R-CNN, inv neck, conv head", 29.5, 135.0, {"box AP": 40.2}),
    OfficialRow("COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x.yaml",
                "Faster R-CNN, inv neck, inv head", 29.0, 91.5, {"box AP": 39.2}),
    OfficialRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x.yaml",
                "Mask R-CNN, conv neck, conv head", 34.2, 224.2,
                {"box AP": 39.9, "mask AP": 35.7}),
    OfficialRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x.yaml",
                "Mask R-CNN, inv neck, conv head", 32.2, 181.3,
                {"box AP": 40.8, "mask AP": 36.4}),
    OfficialRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x.yaml",
                "Mask R-CNN, inv neck, inv head", 29.5, 104.6,
                {"box AP": 39.6, "mask AP": 35.1}),
    OfficialRow("COCO-Detection/retinanet_rednet50_fpn_1x.yaml", "RetinaNet, conv neck",
                27.8, 210.1, {"box AP": 38.2}),
    OfficialRow("COCO-Detection/retinanet_rednet50_invfpn_1x.yaml", "RetinaNet, inv neck",
                26.3, 199.9, {"box AP": 38.2}),
    OfficialRow("Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k.yaml",
                "Semantic FPN, conv neck", 18.5, 293.9, {"mIoU": 78.0}),
    OfficialRow("Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k.yaml",
                "Semantic FPN, inv neck", 16.4, 205.2, {"mIoU": 79.1}),
    OfficialRow("Cityscapes-SemanticSegmentation/upernet_rednet50_80k.yaml",
                "UPerNet (+ aux head)", 56.4, 1825.6, {"mIoU": 80.6}),
)


def official_row(config):
    """The official row of a config path under configs/ (``.yaml`` or ``.py``, with or
    without the extension)."""
    stem = config[:-5] if config.endswith(".yaml") else config[:-3] if config.endswith(
        ".py") else config
    for row in OFFICIAL_MODEL_ZOO:
        if row.config[:-5] == stem:
            return row
    raise KeyError(f"{config!r} is no row of the official model zoo; rows: "
                   + ", ".join(r.config for r in OFFICIAL_MODEL_ZOO))
