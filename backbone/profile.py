"""Mult-Adds and parameter counter, and the paper's resource tables (Howard et al., 2017, Tables 2-9,
Figures 4 and 5).

Counting follows the paper: a convolution costs ``k*k*(Cin/groups)*Cout*Hout*Wout`` multiply-adds (Eq. 2
and 4 of Section 3.1, with the output size in place of ``D_F``), a fully connected layer ``in*out``; batch
norm, activations, pooling and bias additions are free. The counter hooks every ``nn.Conv*`` and
``nn.Linear`` module of any model and reads the real output shapes, so it also counts detection models and
heads. Functional calls (``F.conv2d`` outside a module) are not seen.

Parameters are the conv and FC *weights* only: batch norm (folded into the conv at inference) and
biases are left out. That is the convention that reproduces the paper: Table 2's parameter shares
(74.59 / 1.06 / 0.02 / 24.33 %) and Table 9's 1.32 M for 0.50 MobileNet-160 come out exactly only
this way; with BN included they read 74.20 % and 1.33 M. ``python -m backbone.profile`` prints that
check for all four conventions. ``ProfileResult`` also reports biases, norm parameters and the total.

``python -m backbone.profile`` prints the paper's tables beside ours with a match flag (a match means our
number, rounded to the digits the paper prints, equals the printed one) and explains every mismatch.
``python -m backbone.profile --alpha 0.5 --resolution 160 --json`` profiles one model.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .mobilenet_v1 import CONV_TYPES, MIN_INPUT_SIZE, ConvBnAct, DepthwiseSeparable, mobilenet_v1
from datasets.io import run_cli

__all__ = [
    "LAYER_TYPES",
    "PARAM_CONVENTION",
    "ProfileResult",
    "TypeCount",
    "count_mult_adds",
    "layer_type",
    "profile_mobilenet",
    "printed_match",
    "main",
]

LAYER_TYPES = ("conv1x1", "conv_dw3x3", "conv3x3", "fc", "other")
PARAM_CONVENTION = "conv + FC weights; no batch norm, no biases"
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class TypeCount:
    mult_adds: int = 0
    params: int = 0


@dataclass
class ProfileResult:
    """What ``count_mult_adds`` measured for one forward pass.

    Attributes:
        mult_adds: multiply-adds of all conv and FC layers for the given input (the whole batch).
        params: conv + FC weights (the paper's convention, see the module docstring).
        per_type: ``LAYER_TYPES`` -> ``TypeCount`` (mult-adds, weights).
        per_module: module name -> mult-adds, in call order (a module called twice is summed).
        params_bias: biases of conv and FC layers.
        params_norm: parameters of normalisation layers (BN scale and shift).
        params_total: every distinct parameter of the model.
    """

    mult_adds: int
    params: int
    per_type: dict[str, TypeCount]
    per_module: dict[str, int] = field(default_factory=dict)
    params_bias: int = 0
    params_norm: int = 0
    params_total: int = 0

    def share(self, kind: str) -> tuple[float, float]:
        """Percent of mult-adds and of params in layer type ``kind`` (Table 2)."""
        if kind not in self.per_type:
            raise ValueError(f"unknown layer type {kind!r}; expected one of {LAYER_TYPES}")
        c = self.per_type[kind]
        return 100.0 * c.mult_adds / max(self.mult_adds, 1), 100.0 * c.params / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_type(module: nn.Module) -> str | None:
    """Table 2's layer type of a conv or FC module (``None`` for modules that cost nothing)."""
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed or len(module.kernel_size) != 2:
            return "other"
        k = tuple(module.kernel_size)
        if module.groups == 1 and k == (1, 1):
            return "conv1x1"
        if module.groups == 1 and k == (3, 3):
            return "conv3x3"
        if k == (3, 3) and module.groups == module.in_channels and module.groups > 1:
            return "conv_dw3x3"
        return "other"
    return None


def _module_mult_adds(module: nn.Module, inp: Tensor, out: Tensor) -> int:
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    assert isinstance(module, nn.modules.conv._ConvNd)
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        # Every input element is scattered through (Cout/groups) kernels of size k*k.
        return inp.numel() * kernel * (module.out_channels // module.groups)
    return out.numel() * kernel * (module.in_channels // module.groups)


def _run(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, tuple):
        model(*inputs)
    elif isinstance(inputs, dict):
        model(**inputs)
    else:
        model(inputs)


def count_mult_adds(model: nn.Module, input_or_inputs: Any) -> ProfileResult:
    """Count multiply-adds and parameters of ``model`` on one forward pass.

    The model runs in eval mode under ``torch.no_grad`` (its mode is restored afterwards, so BN running
    statistics are untouched). Meta tensors work and are the fastest way: only shapes are needed.

    Args:
        model: any ``nn.Module``; its ``nn.Conv*`` and ``nn.Linear`` submodules are counted.
        input_or_inputs: a Tensor (``model(x)``), a tuple (``model(*inputs)``), a dict (``model(**inputs)``)
            or anything else passed as the single argument (e.g. a detection model's ``list[Tensor]``).
            Counts cover the whole batch: use batch 1 for per-image figures.
    Returns:
        A ``ProfileResult``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    per_type = {k: TypeCount() for k in LAYER_TYPES}
    per_module: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        if not isinstance(out, Tensor) or not args or not isinstance(args[0], Tensor):
            return
        ma = _module_mult_adds(module, args[0], out)
        kind = layer_type(module)
        assert kind is not None
        per_type[kind].mult_adds += ma
        name = names.get(module, "")
        per_module[name] = per_module.get(name, 0) + ma

    handles = [m.register_forward_hook(hook) for m in model.modules() if layer_type(m) is not None]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _run(model, input_or_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    # Parameters are a property of the model, not of the pass: count each distinct tensor once.
    seen: set[int] = set()
    params_bias = params_norm = 0
    for m in model.modules():
        kind = layer_type(m)
        for pname, p in m.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            if kind is not None and pname == "weight":
                per_type[kind].params += p.numel()
            elif kind is not None and pname == "bias":
                params_bias += p.numel()
            elif isinstance(m, _NORM_TYPES):
                params_norm += p.numel()
            else:
                continue  # counted in params_total below
            seen.add(id(p))
    params_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ProfileResult(
        mult_adds=sum(c.mult_adds for c in per_type.values()),
        params=sum(c.params for c in per_type.values()),
        per_type=per_type,
        per_module=per_module,
        params_bias=params_bias,
        params_norm=params_norm,
        params_total=params_total,
    )


def profile_mobilenet(
    alpha: float = 1.0,
    resolution: int = 224,
    *,
    conv: str = "separable",
    shallow: bool = False,
    num_classes: int = 1000,
    device: str | torch.device = "meta",
) -> ProfileResult:
    """Profile ``mobilenet_v1(alpha, conv=..., shallow=...)`` on one ``resolution`` x ``resolution`` image.

    ``device="meta"`` (default) builds the model without memory and runs no arithmetic: counting needs
    only shapes.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution must be an int (pixels), got {resolution!r}")
    if resolution < MIN_INPUT_SIZE:
        raise ValueError(f"resolution must be >= {MIN_INPUT_SIZE} px, got {resolution}")
    with torch.device(device):
        model = mobilenet_v1(alpha, num_classes=num_classes, conv=conv, shallow=shallow)
        x = torch.empty(1, 3, resolution, resolution)
    return count_mult_adds(model, x)


# ---------------------------------------------------------------------------------------------------
# The paper's printed numbers and the comparison report.


def printed_match(ours: float, printed: str) -> bool:
    """True when ``ours`` rounded (half up) to the decimals of ``printed`` equals the printed value."""
    try:
        p = Decimal(printed)
    except InvalidOperation:
        raise ValueError(f"printed value must be a decimal number as a string, got {printed!r}") from None
    exponent = p.as_tuple().exponent
    assert isinstance(exponent, int)
    return Decimal(repr(float(ours))).quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP) == p


@dataclass(frozen=True)
class Row:
    label: str
    ma_printed: str | None  # million Mult-Adds (or percent for Table 2), as printed
    ma_ours: float
    params_printed: str | None
    params_ours: float

    @property
    def matches(self) -> list[bool]:
        out = []
        if self.ma_printed is not None:
            out.append(printed_match(self.ma_ours, self.ma_printed))
        if self.params_printed is not None:
            out.append(printed_match(self.params_ours, self.params_printed))
        return out


# table -> row -> ((alpha, resolution, conv, shallow), million Mult-Adds, million params), numbers as printed.
PAPER_MODELS: dict[str, dict[str, tuple[tuple[float, int, str, bool], str, str]]] = {
    "Table 4. Depthwise Separable vs Full Convolution MobileNet": {
        "Conv MobileNet": ((1.0, 224, "full", False), "4866", "29.3"),
        "MobileNet": ((1.0, 224, "separable", False), "569", "4.2"),
    },
    "Table 5. Narrow vs Shallow MobileNet": {
        "0.75 MobileNet": ((0.75, 224, "separable", False), "325", "2.6"),
        "Shallow MobileNet": ((1.0, 224, "separable", True), "307", "2.9"),
    },
    "Table 6. MobileNet Width Multiplier": {
        "1.0 MobileNet-224": ((1.0, 224, "separable", False), "569", "4.2"),
        "0.75 MobileNet-224": ((0.75, 224, "separable", False), "325", "2.6"),
        "0.5 MobileNet-224": ((0.5, 224, "separable", False), "149", "1.3"),
        "0.25 MobileNet-224": ((0.25, 224, "separable", False), "41", "0.5"),
    },
    "Table 7. MobileNet Resolution": {
        "1.0 MobileNet-224": ((1.0, 224, "separable", False), "569", "4.2"),
        "1.0 MobileNet-192": ((1.0, 192, "separable", False), "418", "4.2"),
        "1.0 MobileNet-160": ((1.0, 160, "separable", False), "290", "4.2"),
        "1.0 MobileNet-128": ((1.0, 128, "separable", False), "186", "4.2"),
    },
    "Table 8. MobileNet Comparison to Popular Models (MobileNet row)": {
        "1.0 MobileNet-224": ((1.0, 224, "separable", False), "569", "4.2"),
    },
    "Table 9. Smaller MobileNet Comparison to Popular Models (MobileNet row)": {
        "0.50 MobileNet-160": ((0.5, 160, "separable", False), "76", "1.32"),
    },
}
TABLE2_PRINTED = {  # layer type -> (Mult-Adds %, Parameters %)
    "conv1x1": ("94.86", "74.59"),
    "conv_dw3x3": ("3.06", "1.06"),
    "conv3x3": ("1.19", "0.02"),
    "fc": ("0.18", "24.33"),
}
TABLE2_LABELS = {"conv1x1": "Conv 1x1", "conv_dw3x3": "Conv DW 3x3", "conv3x3": "Conv 3x3", "fc": "Fully Connected"}
TABLE3_PRINTED = {  # row -> (million Mult-Adds, million params)
    "Convolution": ("462", "2.36"),
    "Depthwise Separable Conv": ("52.3", "0.27"),
    "alpha = 0.75": ("29.6", "0.15"),
    "rho = 0.714": ("15.1", "0.15"),
}
GRID_ALPHAS = (1.0, 0.75, 0.5, 0.25)
GRID_RESOLUTIONS = (224, 192, 160, 128)


def _flag(ok: Iterable[bool]) -> str:
    ok = list(ok)
    return "-" if not ok else ("yes" if all(ok) else "NO")


def _fmt_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [title, line(head), line(["-" * w for w in widths]), *[line(r) for r in rows], ""]


def _model_rows(rows: Sequence[Row], ma_digits: int = 2, p_digits: int = 3) -> list[list[str]]:
    out = []
    for r in rows:
        ma_ok = [printed_match(r.ma_ours, r.ma_printed)] if r.ma_printed is not None else []
        p_ok = [printed_match(r.params_ours, r.params_printed)] if r.params_printed is not None else []
        out.append(
            [
                r.label,
                r.ma_printed or "-",
                f"{r.ma_ours:.{ma_digits}f}",
                _flag(ma_ok),
                r.params_printed or "-",
                f"{r.params_ours:.{p_digits}f}",
                _flag(p_ok),
            ]
        )
    return out


_HEAD = ["model", "Mult-Adds paper (M)", "ours (M)", "match", "Params paper (M)", "ours (M)", "match"]


class Report:
    """Collects the comparison lines and every mismatch (with its explanation)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.compared = 0
        self.mismatched: list[str] = []

    def table(self, title: str, head: Sequence[str], rows: Sequence[Sequence[str]], checks: list[tuple[str, bool]]):
        self.lines += _fmt_table(title, head, rows)
        for what, ok in checks:
            self.compared += 1
            if not ok:
                self.mismatched.append(f"{title.split('.')[0]}: {what}")

    def note(self, text: str, width: int = 104) -> None:
        wrapped = [
            part for line in text.split("\n") for part in textwrap.wrap(line, width, break_on_hyphens=False) or [""]
        ]
        self.lines += [("  note: " if i == 0 else "        ") + line for i, line in enumerate(wrapped)]
        self.lines.append("")


def _mega(x: int) -> float:
    return x / 1e6


def _param_convention_check(report: Report, base: ProfileResult, small: ProfileResult) -> None:
    """Which parameter convention reproduces Table 2's shares and Table 9's 1.32 M?"""
    rows, checks = [], []
    kinds = list(TABLE2_PRINTED)
    for name, with_bias, with_bn in [
        ("weights only (chosen)", False, False),
        ("weights + biases", True, False),
        ("weights + BN", False, True),
        ("weights + biases + BN", True, True),
    ]:
        def total(r: ProfileResult) -> int:
            return r.params + (r.params_bias if with_bias else 0) + (r.params_norm if with_bn else 0)

        # The only bias in MobileNet is the FC's, so it belongs to the "fc" share.
        fc_extra = base.params_bias if with_bias else 0
        shares = []
        for k in kinds:
            p = base.per_type[k].params + (fc_extra if k == "fc" else 0)
            shares.append(100.0 * p / total(base))
        ok2 = all(printed_match(s, TABLE2_PRINTED[k][1]) for s, k in zip(shares, kinds))
        t9 = _mega(total(small))
        ok9 = printed_match(t9, "1.32")
        rows.append([name, " / ".join(f"{s:.2f}" for s in shares), _flag([ok2]), f"{t9:.4f}", _flag([ok9])])
        if name.endswith("(chosen)"):
            checks = [("parameter convention reproduces Table 2 shares", ok2), ("... and Table 9's 1.32 M", ok9)]
    report.table(
        "Parameter convention: which count reproduces the paper? (Table 2 params % for "
        "1x1 / dw / 3x3 / FC: 74.59 / 1.06 / 0.02 / 24.33; Table 9: 1.32 M)",
        ["convention", "Table 2 params % (ours)", "match", "0.50-160 params (M)", "match"],
        rows,
        checks,
    )
    report.note(
        f"chosen: {PARAM_CONVENTION}. Batch norm is folded into the conv weights at inference and the "
        "paper counts it nowhere; with BN the 1x1 share drops to 74.2 % and 0.50 MobileNet-160 rounds to 1.33 M."
    )


def _table2(report: Report, base: ProfileResult) -> None:
    rows, checks = [], []
    for k, (ma_p, par_p) in TABLE2_PRINTED.items():
        ma, par = base.share(k)
        ok_ma, ok_p = printed_match(ma, ma_p), printed_match(par, par_p)
        rows.append([TABLE2_LABELS[k], ma_p, f"{ma:.3f}", _flag([ok_ma]), par_p, f"{par:.3f}", _flag([ok_p])])
        checks += [(f"{TABLE2_LABELS[k]} Mult-Adds %", ok_ma), (f"{TABLE2_LABELS[k]} params %", ok_p)]
    report.table(
        "Table 2. Resource Per Layer Type (1.0 MobileNet-224)",
        ["type", "Mult-Adds paper %", "ours %", "match", "Params paper %", "ours %", "match"],
        rows,
        checks,
    )
    printed_sum = sum(Decimal(v[0]) for v in TABLE2_PRINTED.values())
    for k, (ma_p, _) in TABLE2_PRINTED.items():
        ma, _ = base.share(k)
        if printed_match(ma, ma_p):
            continue
        ours_2 = f"{ma:.2f}"
        swapped = sorted(ours_2) == sorted(ma_p)
        fixed_sum = printed_sum - Decimal(ma_p) + Decimal(ours_2)
        report.note(
            f"{TABLE2_LABELS[k]} Mult-Adds: ours {base.per_type[k].mult_adds:,} / {base.mult_adds:,} = {ma:.3f} %, "
            f"paper prints {ma_p} %.\n"
            f"The paper's Mult-Adds column sums to {printed_sum} %; with {ours_2} it sums to {fixed_sum} %"
            + (f", so the printed {ma_p} is {ours_2} with two digits swapped." if swapped else ".")
            + ("\nThe 3x3 conv is only the first layer: 3*3*3*32 weights at 112x112 = "
               f"{9 * 3 * 32 * 112 * 112:,} Mult-Adds." if k == "conv3x3" else "")
        )
    param_sum = sum(Decimal(v[1]) for v in TABLE2_PRINTED.values())
    report.note(f"the paper's params column sums to {param_sum} %.")


def _table3(report: Report) -> None:
    """Table 3: one 14x14x512 layer, modifications applied cumulatively."""
    dev = torch.device("meta")
    with dev:
        relu = nn.ReLU
        cases = [  # (row, layer, input channels, map size)
            ("Convolution", ConvBnAct(512, 512, 3, 1, groups=1, act=relu), 512, 14),
            ("Depthwise Separable Conv", DepthwiseSeparable(512, 512, 1, relu), 512, 14),
            ("alpha = 0.75", DepthwiseSeparable(384, 384, 1, relu), 384, 14),
            # rho = 0.714 is 160/224: the 14x14 map of a 224 input is 10x10 at 160 px.
            ("rho = 0.714", DepthwiseSeparable(384, 384, 1, relu), 384, round(14 * 0.714)),
        ]
        results = {name: count_mult_adds(m, torch.empty(1, c, s, s)) for name, m, c, s in cases}
    rows, checks = [], []
    for name, _, _, size in cases:
        r = results[name]
        ma_p, par_p = TABLE3_PRINTED[name]
        row = Row(f"{name} ({size}x{size})", ma_p, _mega(r.mult_adds), par_p, _mega(r.params))
        rows += _model_rows([row], 2, 4)
        checks += [(f"{name} Mult-Adds", row.matches[0]), (f"{name} params", row.matches[1])]
    report.table("Table 3. Modifications of a 14x14x512 layer (3x3 kernel, 512 -> 512)", _HEAD, rows, checks)
    a, r = results["alpha = 0.75"], results["rho = 0.714"]
    rho = 10 / 14
    report.note(
        f"rho = 0.714 applied to D_F = 14 gives 14 * 0.714 = {14 * 0.714:.3f}, i.e. a 10x10 map: rho = 10/14 = "
        f"{rho:.4f} = 160/224.\n"
        f"Eq. 7 scales Mult-Adds by rho^2: {_mega(a.mult_adds):.3f} M * {rho ** 2:.4f} = "
        f"{_mega(a.mult_adds) * rho ** 2:.3f} M (we count {_mega(r.mult_adds):.3f} M on the 10x10 map); "
        f"the exact 0.714^2 gives {_mega(a.mult_adds) * 0.714 ** 2:.3f} M.\n"
        "Both round to the printed 15.1, and params do not depend on rho: the row is consistent."
    )


def _model_tables(report: Report, cache: dict) -> None:
    for title, entries in PAPER_MODELS.items():
        rows, checks = [], []
        for label, ((alpha, res, conv, shallow), ma_p, par_p) in entries.items():
            r = cache[(alpha, res, conv, shallow)]
            row = Row(label, ma_p, _mega(r.mult_adds), par_p, _mega(r.params))
            rows += _model_rows([row])
            checks += [(f"{label} Mult-Adds", row.matches[0]), (f"{label} params", row.matches[1])]
        report.table(title, _HEAD, rows, checks)
        for label, ((alpha, res, conv, shallow), ma_p, par_p) in entries.items():
            r = cache[(alpha, res, conv, shallow)]
            for what, ours, printed in (("Mult-Adds", _mega(r.mult_adds), ma_p), ("params", _mega(r.params), par_p)):
                if not printed_match(ours, printed):
                    report.note(_explain_model_mismatch(label, what, ours, printed, (alpha, res, conv, shallow), cache))


def _explain_model_mismatch(label: str, what: str, ours: float, printed: str, key: tuple, cache: dict) -> str:
    """Arithmetic for a model row that does not match the printed number."""
    alpha, res, conv, shallow = key
    text = f"{label} {what}: ours {ours:.3f} M, paper {printed} M ({100 * (float(printed) / ours - 1):+.2f} %)."
    if shallow and what == "Mult-Adds":
        full = cache[(alpha, res, "separable", False)]
        removed = full.mult_adds - cache[key].mult_adds
        per_layer = removed / 5
        text += (
            f"\nThe five 14x14x512 separable layers cost {per_layer / 1e6:.3f} M each "
            f"(9*512*196 + 512*512*196); removing them leaves {_mega(full.mult_adds):.3f} - "
            f"{removed / 1e6:.3f} = {ours:.3f} M."
        )
        n = (_mega(full.mult_adds) - float(printed)) / (per_layer / 1e6)
        text += f"\nThe printed {printed} M would mean removing {n:.2f} such layers, not a whole number."
    if shallow and what == "params":
        full = cache[(alpha, res, "separable", False)]
        text += (
            f"\nFull model {_mega(full.params):.3f} M minus 5 * (9*512 + 512*512) = "
            f"{5 * (9 * 512 + 512 * 512) / 1e6:.3f} M = {ours:.3f} M."
        )
    if what == "Mult-Adds" and res != 224 and conv == "separable" and not shallow:
        # Eq. 7: conv cost scales by rho^2, the FC does not. Did the paper scale the whole total?
        at224 = cache[(alpha, 224, conv, shallow)]
        rho2 = (res / 224) ** 2
        fc = _mega(at224.per_type["fc"].mult_adds)
        scaled_all = _mega(at224.mult_adds) * rho2
        text += (
            f"\nrho = {res}/224 scales every conv map exactly, so conv Mult-Adds are rho^2 = {rho2:.4f} times the "
            f"224 px ones: ({_mega(at224.mult_adds):.3f} - {fc:.3f} FC) * {rho2:.4f} + {fc:.3f} FC = {ours:.3f} M."
            f"\nScaling the whole 224 px total, FC included, gives {_mega(at224.mult_adds):.3f} * {rho2:.4f} = "
            f"{scaled_all:.3f} M, which "
            + (f"rounds to the printed {printed}: the paper seems to have applied rho^2 to the FC too."
               if printed_match(scaled_all, printed) else f"does not give {printed} either.")
        )
    if what == "Mult-Adds" and conv == "full":
        fc = _mega(cache[key].per_type["fc"].mult_adds)
        no_fc = ours - fc
        text += (
            "\n(Each depthwise+pointwise pair is one full 3x3 conv with the depthwise stride: "
            f"sum 9*Cin*Cout*Hout*Wout = {ours - fc:.3f} M, + FC {fc:.3f} M.)"
            f"\nWithout the FC it is {no_fc:.3f} M, which "
            + (f"rounds to {printed}; but Table 4's MobileNet row (569) and the Conv MobileNet params "
               f"({_mega(cache[key].params):.3f} M, FC included) count the FC, so that reading is not "
               "consistent either. The gap is {:.3f} M ({:+.3f} %).".format(ours - float(printed),
                                                                          100 * (float(printed) / ours - 1))
               if printed_match(no_fc, printed) else f"does not give {printed} either.")
        )
    return text


def _rho_reading_note(report: Report, cache: dict) -> None:
    """Test the 'rho^2 times the whole 224 px total' reading on every printed reduced-resolution row."""
    parts = []
    all_ok = True
    for entries in PAPER_MODELS.values():
        for label, ((alpha, res, conv, shallow), ma_p, _) in entries.items():
            if res == 224 or label in {p.split(" ->")[0] for p in parts}:
                continue
            scaled = _mega(cache[(alpha, 224, conv, shallow)].mult_adds) * (res / 224) ** 2
            ok = printed_match(scaled, ma_p)
            all_ok &= ok
            parts.append(f"{label} -> {scaled:.2f} ({'=' if ok else '!='} {ma_p})")
    report.note(
        "reading 'Mult-Adds at rho = rho^2 * Mult-Adds at 224 px, FC included' on every printed reduced-resolution "
        "row:\n" + "; ".join(parts) + ".\n"
        + ("It reproduces all of them, our exact count all but the two 160 px rows: the paper most likely scaled "
           "the 224 px totals instead of counting; the FC does not shrink with the input, so we keep the exact count."
           if all_ok else "It does not reproduce all of them either.")
    )


def _table1_stride_note(report: Report, base: ProfileResult) -> None:
    """Table 1 prints conv13's depthwise layer as s2 on a 7x7 input; the totals say s1."""
    with torch.device("meta"):
        model = mobilenet_v1(1.0)
        s2 = copy.deepcopy(model)
        s2.features.conv13.depthwise.conv.stride = (2, 2)
        r = count_mult_adds(s2, torch.empty(1, 3, 224, 224))
    report.note(
        "Table 1 prints the last depthwise conv as 's2' on a 7x7 input. With stride 2 there the network would "
        f"cost {_mega(r.mult_adds):.2f} M Mult-Adds (conv13 on 4x4), not 569; with stride 1 (ours) it costs "
        f"{_mega(base.mult_adds):.2f} M. The printed s2 is a typo."
    )


def _grid(report: Report, cache: dict) -> None:
    known: dict[tuple[float, int], tuple[str, str]] = {}
    for entries in PAPER_MODELS.values():
        for (alpha, res, conv, shallow), ma_p, par_p in entries.values():
            if conv == "separable" and not shallow:
                known[(alpha, res)] = (ma_p, par_p)
    for what, getter, digits in (("Mult-Adds (M), Figure 4", lambda r: r.mult_adds, 2),
                                 ("Parameters (M), Figure 5", lambda r: r.params, 3)):
        rows, checks = [], []
        for alpha in GRID_ALPHAS:
            cells = [f"{alpha:g}"]
            for res in GRID_RESOLUTIONS:
                v = _mega(getter(cache[(alpha, res, "separable", False)]))
                cell = f"{v:.{digits}f}"
                if (alpha, res) in known:
                    printed = known[(alpha, res)][0 if digits == 2 else 1]
                    ok = printed_match(v, printed)
                    cell += f" [{printed} {'ok' if ok else 'NO'}]"
                cells.append(cell)
            rows.append(cells)
        report.table(f"Alpha x resolution grid: {what}", ["alpha \\ px", *map(str, GRID_RESOLUTIONS)], rows, checks)
    report.note(
        "Figures 4 and 5 plot these 16 models without printing the numbers; the [paper ok] marks are the "
        "cells that Tables 6, 7 and 9 print (compared and explained there, not counted again).\n"
        "Params do not depend on resolution (Figure 5's caption)."
    )


def paper_report() -> Report:
    """Compare every resource number of Tables 2-9 and the Figure 4/5 grid with our counts."""
    keys = {(a, r, "separable", False) for a in GRID_ALPHAS for r in GRID_RESOLUTIONS}
    for entries in PAPER_MODELS.values():
        keys |= {k for k, _, _ in entries.values()}
    cache = {k: profile_mobilenet(k[0], k[1], conv=k[2], shallow=k[3]) for k in sorted(keys, key=str)}
    base = cache[(1.0, 224, "separable", False)]
    small = cache[(0.5, 160, "separable", False)]

    report = Report()
    report.lines += [
        "MobileNets (Howard et al., 2017): paper's printed resources vs our counter",
        f"Mult-Adds: conv k*k*(Cin/groups)*Cout*Hout*Wout + FC in*out, per 1 image. Params: {PARAM_CONVENTION}.",
        "match = our number rounded to the paper's printed digits equals the printed number.",
        "",
    ]
    _param_convention_check(report, base, small)
    _table2(report, base)
    _table1_stride_note(report, base)
    _table3(report)
    _model_tables(report, cache)
    _rho_reading_note(report, cache)
    _grid(report, cache)
    n_bad = len(report.mismatched)
    report.lines.append(
        f"Summary: {report.compared - n_bad}/{report.compared} printed numbers match"
        + ("." if not n_bad else "; mismatches (explained in the notes above):")
    )
    report.lines += [f"  - {m}" for m in report.mismatched]
    return report


# ---------------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha must be a number, got {text!r}") from None
    if not 0.0 < value <= 2.0:
        raise argparse.ArgumentTypeError(f"--alpha must be in (0, 2], got {value}")
    return value


def _resolution(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolution must be an integer (pixels), got {text!r}") from None
    if value < MIN_INPUT_SIZE:
        raise argparse.ArgumentTypeError(f"--resolution must be >= {MIN_INPUT_SIZE}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m backbone.profile",
        description="Without model options: print the paper's Tables 2-9 and the Figure 4/5 grid beside our "
        "counts. With --alpha/--resolution/--conv/--shallow/--json: profile one MobileNet.",
    )
    p.add_argument("--alpha", type=_positive_float, default=None, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=_resolution, default=None, help="input size in px (default 224)")
    p.add_argument("--conv", choices=CONV_TYPES, default=None, help="'full' is Table 4's Conv MobileNet")
    p.add_argument("--shallow", action="store_true", help="Table 5's shallow MobileNet")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--device",
        default="meta",
        help="device to run the counting pass on (default 'meta': shapes only, no arithmetic, no memory)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    single = args.json or args.alpha is not None or args.resolution is not None or args.conv or args.shallow
    if not single:
        print("\n".join(paper_report().lines))
        return 0
    if args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    alpha = 1.0 if args.alpha is None else args.alpha
    resolution = 224 if args.resolution is None else args.resolution
    conv = args.conv or "separable"
    r = profile_mobilenet(
        alpha, resolution, conv=conv, shallow=args.shallow, num_classes=args.num_classes, device=args.device
    )
    if args.json:
        out = {
            "alpha": alpha,
            "resolution": resolution,
            "conv": conv,
            "shallow": args.shallow,
            "num_classes": args.num_classes,
            "mult_adds": r.mult_adds,
            "params": r.params,
            "params_bias": r.params_bias,
            "params_norm": r.params_norm,
            "params_total": r.params_total,
            "param_convention": PARAM_CONVENTION,
            "per_type": {k: asdict(v) for k, v in r.per_type.items()},
        }
        print(json.dumps(out))
        return 0
    name = f"{alpha:g} MobileNet-{resolution}" + (" (Conv MobileNet)" if conv == "full" else "") + (
        " (shallow)" if args.shallow else "")
    rows = []
    for k in LAYER_TYPES:
        ma, par = r.share(k)
        c = r.per_type[k]
        rows.append([k, f"{_mega(c.mult_adds):.3f}", f"{ma:.2f}", f"{_mega(c.params):.4f}", f"{par:.2f}"])
    lines = _fmt_table(name, ["type", "Mult-Adds (M)", "%", "Params (M)", "%"], rows)
    lines += [
        f"total: {_mega(r.mult_adds):.2f} M Mult-Adds, {_mega(r.params):.3f} M params ({PARAM_CONVENTION}); "
        f"all parameters incl. BN and biases: {_mega(r.params_total):.3f} M",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_cli(main)
