"""Pretrained weights: our own state dicts, timm's ``mobilenetv1_100`` layout, or timm's hub.

Files are read with ``torch.load(weights_only=True)`` or safetensors, so loading a file never runs code
from it. timm's layout is converted exactly (same tensors, renamed), so after loading the same weights our
``mobilenet_v1(act="relu6")`` and ``timm.create_model("mobilenetv1_100")`` compute the same logits.
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .factory import TimmBackbone
from .mobilenet_v1 import MobileNetV1

__all__ = ["load_pretrained", "read_state_dict", "convert_timm_mobilenetv1"]

TIMM_HUB_MODEL = "mobilenetv1_100"
_CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)\.(.+)$")
_TIMM_PARTS = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "conv_pw": "pointwise.conv", "bn2": "pointwise.bn"}


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` when ``path`` cannot be a ``torch.save`` file, saying what it is instead.

    ``torch.save`` writes a zip archive (or, before PyTorch 1.6, a pickle stream); anything else would
    only give ``torch.load``'s paragraph about ``weights_only`` instead of the plain fact.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):  # a zip archive without its end: a write cut short
        raise ValueError(f"{path} is truncated (an incomplete zip archive; was the run killed while writing it?)")
    if not head.startswith(b"\x80"):
        what = "an empty file" if not head else f"a file that starts with {head[:8]!r}"
        raise ValueError(f"{path} is not a checkpoint: torch.save writes a zip archive, this is {what}")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A training checkpoint of this project (a dict with a ``model`` entry) or a dict with ``state_dict``
    is unwrapped to the model's tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of refused objects, corrupt archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read weights from {path}: {first}") from exc
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _is_timm_mobilenetv1(state: Mapping[str, Tensor]) -> bool:
    return "conv_stem.weight" in state and any(k.startswith("blocks.") for k in state)


def convert_timm_mobilenetv1(state: Mapping[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """Rename timm's ``mobilenetv1_*`` keys to ours (``conv_stem``/``bn1`` -> ``features.conv0``,
    ``blocks.S.J`` -> ``features.convK`` in order, ``conv_dw``/``bn1`` -> ``depthwise``,
    ``conv_pw``/``bn2`` -> ``pointwise``)."""
    blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in state if (m := _TIMM_BLOCK.match(k))})
    layer_of = {sj: i for i, sj in enumerate(blocks, start=1)}
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state.items():
        if key.startswith("conv_stem."):
            out["features.conv0.conv." + key[len("conv_stem.") :]] = value
        elif key.startswith("bn1."):
            out["features.conv0.bn." + key[len("bn1.") :]] = value
        elif m := _TIMM_BLOCK.match(key):
            k = layer_of[(int(m.group(1)), int(m.group(2)))]
            out[f"features.conv{k}.{_TIMM_PARTS[m.group(3)]}.{m.group(4)}"] = value
        elif key in _CLASSIFIER_KEYS:
            out[key] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a timm mobilenetv1 state dict")
    return out


def _fetch_timm(model: nn.Module) -> dict[str, Tensor]:
    """Download ImageNet weights through timm's hub (network; never used by the tests)."""
    import timm

    name = model.name if isinstance(model, TimmBackbone) else TIMM_HUB_MODEL
    return timm.create_model(name, pretrained=True).state_dict()


def load_pretrained(model: nn.Module, source: str | os.PathLike, *, strict_classifier: bool = False) -> nn.Module:
    """Load weights into ``model`` in place and return it.

    Args:
        model: a ``MobileNetV1`` or a ``TimmBackbone``.
        source: path to a state dict (ours or timm's ``mobilenetv1_100`` layout; ``.safetensors`` or a torch
            file) or the string ``"timm"`` to fetch timm's ImageNet weights from its hub.
        strict_classifier: raise instead of dropping a classifier of another size.
    Raises:
        ValueError: tensors of the wrong shape (naming the first ones), missing or unexpected keys.
    """
    state = _fetch_timm(model) if str(source) == "timm" else read_state_dict(source)
    if isinstance(model, MobileNetV1) and _is_timm_mobilenetv1(state):
        if model.conv_type != "separable" or model.shallow:
            raise ValueError("timm mobilenetv1 weights fit only conv='separable', shallow=False models")
        state = convert_timm_mobilenetv1(state)
    elif isinstance(model, TimmBackbone) and not any(k.startswith("model.") for k in state):
        state = {"model." + k: v for k, v in state.items()}

    own = model.state_dict()
    classifier_keys = {k for k in (*own, *state) if k.rsplit(".", 1)[0].endswith("classifier")}
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and k not in classifier_keys and own[k].shape != v.shape
    ]
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise ValueError(
            "weights do not fit this model (another alpha or variant?): " + "; ".join(mismatched[:3]) + more
        )
    dropped = [k for k in classifier_keys if k in state and (k not in own or own[k].shape != state[k].shape)]
    if dropped:
        if strict_classifier:
            raise ValueError(f"classifier size differs: {', '.join(dropped)}")
        warnings.warn(
            f"dropping classifier weights of another size ({', '.join(sorted(dropped))}); "
            "the classifier keeps its fresh initialisation (fine-tuning)",
            stacklevel=2,
        )
        state = {k: v for k, v in state.items() if k not in dropped}

    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and k not in classifier_keys and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise ValueError(f"weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    return model
