"""The official model zoo's Params and FLOPs columns (the seed README), by config."""
from typing import NamedTuple

__all__ = ["SeedRow", "SEED_MODEL_ZOO"]


class SeedRow(NamedTuple):
    config: str       # under configs/
    name: str
    params_m: float   # millions, as the seed's table prints them
    flops_g: float    # GFLOPs (multiply-adds), as the seed's table prints them


SEED_MODEL_ZOO = (
    SeedRow("ImageNet-Classification/rednet26.yaml", "RedNet-26", 9.23, 1.73),
    SeedRow("ImageNet-Classification/rednet38.yaml", "RedNet-38", 12.39, 2.22),
    SeedRow("ImageNet-Classification/rednet50.yaml", "RedNet-50", 15.54, 2.71),
    SeedRow("ImageNet-Classification/rednet101.yaml", "RedNet-101", 25.65, 4.74),
    SeedRow("ImageNet-Classification/rednet152.yaml", "RedNet-152", 33.99, 6.79),
    SeedRow("COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml",
            "Faster R-CNN, conv neck, conv head", 31.6, 177.9),
    SeedRow("COCO-Detection/faster_rcnn_rednet50_invfpn_1x.yaml",
            "Faster R-CNN, inv neck, conv head", 29.5, 135.0),
    SeedRow("COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x.yaml",
            "Faster R-CNN, inv neck, inv head", 29.0, 91.5),
    SeedRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x.yaml",
            "Mask R-CNN, conv neck, conv head", 34.2, 224.2),
    SeedRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x.yaml",
            "Mask R-CNN, inv neck, conv head", 32.2, 181.3),
    SeedRow("COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x.yaml",
            "Mask R-CNN, inv neck, inv head", 29.5, 104.6),
    SeedRow("COCO-Detection/retinanet_rednet50_fpn_1x.yaml", "RetinaNet, conv neck", 27.8, 210.1),
    SeedRow("COCO-Detection/retinanet_rednet50_invfpn_1x.yaml", "RetinaNet, inv neck", 26.3, 199.9),
    SeedRow("Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k.yaml",
            "Semantic FPN, conv neck", 18.5, 293.9),
    SeedRow("Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k.yaml",
            "Semantic FPN, inv neck", 16.4, 205.2),
    SeedRow("Cityscapes-SemanticSegmentation/upernet_rednet50_80k.yaml",
            "UPerNet (+ aux head)", 56.4, 1825.6),
)
