"""MobileNet v1 (Howard et al., 2017, "MobileNets", Section 3 and Table 1).

The body is written as data (``TABLE1``) and built by one loop. The two global hyper-parameters of
Section 3.3/3.4 are:

* ``alpha`` (width multiplier): every layer's channel count ``c`` becomes ``round_channels(alpha * c)``.
  This is the only place where alpha is applied.
* ``rho`` (resolution multiplier): set implicitly by the input size, as the paper does. The network is
  fully convolutional up to the global average pool, so any input of at least 32 px works.

The ablation variants of Section 4.1 are options of the same builder:

* ``conv="full"`` is Table 4's "Conv MobileNet": each depthwise + pointwise pair becomes one full 3x3
  convolution with the depthwise layer's stride.
* ``shallow=True`` is Table 5's shallow MobileNet: the five separable layers at 14x14x512 are removed.

Table 1 prints the last depthwise layer (``conv13``) as stride 2 on a 7x7 input while its output is still
7x7; the released network uses stride 1 there, which is what we build.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["TABLE1", "MobileNetV1", "mobilenet_v1", "round_channels", "resolve_feature_indices", "MIN_INPUT_SIZE"]

# Table 1 as data: the stem is a full 3x3 conv (stride 2, 32 channels); each following row is one
# depthwise-separable layer (stride of the depthwise conv, output channels of the pointwise conv).
STEM = (2, 32)
TABLE1: tuple[tuple[int, int], ...] = (
    (1, 64),  # conv1
    (2, 128),  # conv2
    (1, 128),  # conv3
    (2, 256),  # conv4
    (1, 256),  # conv5
    (2, 512),  # conv6
    (1, 512),  # conv7   - conv7..conv11: the five 14x14x512 layers that shallow=True removes
    (1, 512),  # conv8
    (1, 512),  # conv9
    (1, 512),  # conv10
    (1, 512),  # conv11
    (2, 1024),  # conv12
    (1, 1024),  # conv13  (Table 1 prints s2; the network uses s1, see the module docstring)
)
SHALLOW_REMOVED = ("conv7", "conv8", "conv9", "conv10", "conv11")
MIN_INPUT_SIZE = 32  # five stride-2 layers: 32 px is the smallest input that keeps a 1x1 final map
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}
CONV_TYPES = ("separable", "full")


def round_channels(channels: float, divisor: int = 8) -> int:
    """The one rounding rule for ``alpha * channels``.

    Round to the nearest multiple of ``divisor`` (at least ``divisor``), and never go more than 10% below
    the exact value. The paper's multipliers 1, 0.75, 0.5 and 0.25 give exact multiples of 8 for every
    layer of Table 1, so they are unaffected; other values (e.g. 0.3, 1.4) land on hardware-friendly
    widths. timm uses the same rule, so its weights for other widths fit too.
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


class ConvBnAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation (Figure 3): every MobileNet layer but the FC has this form."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int, act: type[nn.Module]):
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
                bn=nn.BatchNorm2d(out_chs),
                act=act(inplace=True),
            )
        )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (filtering) then 1x1 pointwise conv (combining), Section 3.1 / Figure 3 right."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, act: type[nn.Module]):
        super().__init__(
            OrderedDict(
                depthwise=ConvBnAct(in_chs, in_chs, 3, stride, groups=in_chs, act=act),
                pointwise=ConvBnAct(in_chs, out_chs, 1, 1, groups=1, act=act),
            )
        )


@dataclass(frozen=True)
class LayerSpec:
    name: str
    stride: int
    out_chs: int
    reduction: int


def layer_specs(alpha: float, shallow: bool) -> list[LayerSpec]:
    """Table 1 after the width multiplier and the shallow ablation: one spec per named layer."""
    specs = [LayerSpec("conv0", STEM[0], round_channels(alpha * STEM[1]), STEM[0])]
    reduction = STEM[0]
    for i, (stride, chs) in enumerate(TABLE1, start=1):
        reduction *= stride
        name = f"conv{i}"
        if shallow and name in SHALLOW_REMOVED:
            continue
        specs.append(LayerSpec(name, stride, round_channels(alpha * chs), reduction))
    return specs


def resolve_feature_indices(
    feature_info: Sequence[dict], indices: int | str | Sequence[int | str] | None
) -> list[int]:
    """Positions in ``feature_info`` for ``indices``: ints (negative allowed) or layer names; None: all."""
    n = len(feature_info)
    if indices is None:
        return list(range(n))
    if isinstance(indices, (int, str)):
        indices = [indices]
    names = [f["name"] for f in feature_info]
    out = []
    for idx in indices:
        if isinstance(idx, str):
            if idx not in names:
                raise ValueError(f"unknown layer {idx!r}; this backbone has {names}")
            out.append(names.index(idx))
        elif -n <= idx < n:
            out.append(idx % n)
        else:
            raise ValueError(f"feature index {idx} out of range for {n} layers")
    return out


class MobileNetV1(nn.Module):
    """MobileNet v1 body + avgpool -> dropout -> FC classifier.

    Attributes:
        feature_info: one dict per named layer (``conv0`` = stem ... ``conv13`` = last pointwise) with
            ``name``, ``module`` (path of the module inside this model), ``num_chs`` and ``reduction``.
        num_features: channels entering the classifier.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        num_classes: int = 1000,
        conv: str = "separable",
        shallow: bool = False,
        act: str = "relu",
        dropout: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a float in (0, 2], got {alpha!r}")
        if not 0.0 < alpha <= 2.0:
            raise ValueError(f"alpha must be in (0, 2], got {alpha}")
        if conv not in CONV_TYPES:
            raise ValueError(f"conv must be one of {CONV_TYPES}, got {conv!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.alpha = float(alpha)
        self.conv_type = conv
        self.shallow = shallow
        self.act_name = act
        self.in_chans = in_chans
        act_layer = ACTIVATIONS[act]

        specs = layer_specs(self.alpha, shallow)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_chs = in_chans
        for spec in specs:
            if spec.name == "conv0" or conv == "full":
                layers[spec.name] = ConvBnAct(in_chs, spec.out_chs, 3, spec.stride, groups=1, act=act_layer)
            else:
                layers[spec.name] = DepthwiseSeparable(in_chs, spec.out_chs, spec.stride, act_layer)
            in_chs = spec.out_chs
        self.features = nn.Sequential(layers)
        self.feature_info = [
            {"name": s.name, "module": f"features.{s.name}", "num_chs": s.out_chs, "reduction": s.reduction}
            for s in specs
        ]
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init on fan-out per group: a depthwise filter feeds 9 outputs, not 9 * channels.
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` for inputs the network cannot take (skipped while tracing/exporting)."""
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D batch [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans}-channel images, got {x.shape[1]} channels (shape {tuple(x.shape)})"
            )
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input is {x.shape[-2]}x{x.shape[-1]} px; MobileNet v1 needs at least "
                f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            )

    def forward_intermediates(
        self, x: Tensor, indices: int | str | Sequence[int | str] | None = None
    ) -> list[Tensor]:
        """Return the maps of the layers named by ``indices`` (positions in ``feature_info``, negative
        allowed, or names such as ``"conv11"``), in the order asked. Stops after the deepest one."""
        self.check_input(x)
        wanted = resolve_feature_indices(self.feature_info, indices)
        if not wanted:
            raise ValueError("indices is empty: name at least one layer")
        last = max(wanted)
        maps: dict[int, Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                maps[i] = x
            if i == last:
                break
        return [maps[i] for i in wanted]

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the FC layer (``num_classes=0``: no classifier, the model returns pooled features)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def split(self, name: str) -> tuple[nn.Sequential, nn.Sequential]:
        """Split the body after layer ``name`` into (trunk, rest), sharing the modules.

        Faster R-CNN runs the trunk (up to ``conv11``) on the image and the rest (``conv12``, ``conv13``)
        on each RoI (Section 4.6 via the TF Object Detection API's ``faster_rcnn_mobilenet_v1``).
        """
        names = [f["name"] for f in self.feature_info]
        if name not in names:
            raise ValueError(f"unknown layer {name!r}; this model has {names}")
        cut = names.index(name) + 1
        children = list(self.features.named_children())
        return nn.Sequential(OrderedDict(children[:cut])), nn.Sequential(OrderedDict(children[cut:]))


def mobilenet_v1(
    alpha: float = 1.0,
    *,
    num_classes: int = 1000,
    conv: str = "separable",
    shallow: bool = False,
    act: str = "relu",
    dropout: float = 0.0,
    in_chans: int = 3,
) -> MobileNetV1:
    """Build MobileNet v1 (Table 1).

    Args:
        alpha: width multiplier in (0, 2]; 1, 0.75, 0.5, 0.25 are the paper's (Table 6).
        num_classes: classifier outputs; 0 gives a headless feature extractor.
        conv: ``"separable"`` (MobileNet) or ``"full"`` (Table 4's Conv MobileNet).
        shallow: remove the five 14x14x512 separable layers (Table 5).
        act: ``"relu"`` (the paper) or ``"relu6"`` (timm's and TF-Slim's released weights).
        dropout: dropout before the FC layer.
        in_chans: input channels.
    """
    return MobileNetV1(
        alpha, num_classes=num_classes, conv=conv, shallow=shallow, act=act, dropout=dropout, in_chans=in_chans
    )
