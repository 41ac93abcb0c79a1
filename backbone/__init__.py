"""MobileNet v1 backbone (Howard et al., 2017) and the shared backbone contract of the suite."""
from .factory import TimmBackbone, create_backbone, select_features
from .mobilenet_v1 import TABLE1, MobileNetV1, mobilenet_v1, round_channels
from .pretrained import convert_timm_mobilenetv1, load_pretrained, read_state_dict

__all__ = [
    "TABLE1",
    "MobileNetV1",
    "TimmBackbone",
    "convert_timm_mobilenetv1",
    "create_backbone",
    "load_pretrained",
    "mobilenet_v1",
    "read_state_dict",
    "round_channels",
    "select_features",
]
