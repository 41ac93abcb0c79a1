"""Load any teacher for distillation (MobileNets paper, Sections 4.5 and 4.7).

Section 4.5 compresses "large systems with unknown or esoteric training procedures": the teacher is
a frozen artefact, often without its training code. :func:`load_teacher` takes a spec string:

============================  =====================================================================
``torchscript:PATH``          a TorchScript archive (``torch.jit.save``); deprecated by PyTorch but
                              still the common format of frozen in-house models
``export:PATH``               a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``)
``onnx:PATH``                 an ONNX model run with ONNX Runtime (no PyTorch code at all)
``timm:NAME[:CHECKPOINT]``    a timm architecture; the checkpoint is read with ``weights_only=True``
                              (without one, timm's pretrained weights are fetched: needs network)
``module:pkg.mod:function``   the user's own factory returning an ``nn.Module``. This imports and
                              RUNS the user's Python code: use it only with code you trust.
============================  =====================================================================

TorchScript and ``torch.export`` archives contain programs, not only weights: load only archives
you trust. ONNX models and timm checkpoints carry no Python.

Every teacher declares its input: size, mean/std (in 0..1 pixel units, as torchvision; a model fed
raw 0..255 pixels has mean 0 and std 1/255) and channel order. Sources, highest priority first:
keyword arguments (the CLI flags ``--teacher-input-size N --teacher-mean R G B --teacher-std R G B``),
a ``config`` YAML, a YAML next to the file (``teacher.pt`` -> ``teacher.yaml``), then what the model
itself says (timm's ``pretrained_cfg``, a static input shape in an export/ONNX program, or
``input_size``/``mean``/``std`` attributes of a ``module:`` model). YAML keys::

    input_size: 160            # or [H, W]
    mean: [0.5, 0.5, 0.5]
    std: [0.5, 0.5, 0.5]
    num_outputs: 40            # optional: checked against the first output
    output: logits             # logits | probabilities | embedding
    channel_order: RGB         # or BGR
    output_index: 0            # optional: pick one output when the model returns several
    kwargs: {}                 # optional: keyword arguments of a module:/timm: factory

A :class:`Teacher` takes the *student's* batch (normalised with the student's mean/std at the
student's resolution), converts it for the teacher (un-normalise, resize, reorder channels,
re-normalise), runs the teacher in eval mode without gradients and returns float32 outputs [B, D].
The first call checks the output shape against the task and fails with a clear message.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from tasks.config import check_keys, read_yaml_mapping

__all__ = [
    "OUTPUT_KINDS",
    "TASKS",
    "TEACHER_KINDS",
    "Teacher",
    "TeacherConfig",
    "TeacherOutputError",
    "load_teacher",
    "parse_teacher_spec",
    "sidecar_config_path",
]

TEACHER_KINDS = ("torchscript", "export", "onnx", "timm", "module")
OUTPUT_KINDS = ("logits", "probabilities", "embedding")
TASKS = ("classification", "attributes", "embedding")


class TeacherOutputError(ValueError):
    """The teacher's output does not fit the task (wrong rank, width or value range)."""


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class TeacherConfig:
    """How to feed a teacher and read its output (see the module docstring for the YAML keys)."""

    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_outputs: int | None = None
    output: str | None = None
    channel_order: str | None = None
    output_index: int | str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> TeacherConfig:
        """Validate a mapping (a YAML file's content); errors name ``source`` and the key."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a teacher config must be a mapping, got {type(data).__name__}")
        check_keys(data, {f.name for f in fields(cls)}, source)
        cfg = cls()
        if data.get("input_size") is not None:
            cfg.input_size = _parse_size(data["input_size"], f"{source}: input_size")
        for key in ("mean", "std"):
            if data.get(key) is not None:
                setattr(cfg, key, _parse_triple(data[key], f"{source}: {key}", positive=key == "std"))
        if data.get("num_outputs") is not None:
            v = data["num_outputs"]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{source}: num_outputs must be an int >= 1, got {v!r}")
            cfg.num_outputs = v
        if data.get("output") is not None:
            if data["output"] not in OUTPUT_KINDS:
                raise ValueError(f"{source}: output must be one of {OUTPUT_KINDS}, got {data['output']!r}")
            cfg.output = data["output"]
        if data.get("channel_order") is not None:
            order = str(data["channel_order"]).upper()
            if order not in ("RGB", "BGR"):
                raise ValueError(f"{source}: channel_order must be RGB or BGR, got {data['channel_order']!r}")
            cfg.channel_order = order
        if data.get("output_index") is not None:
            v = data["output_index"]
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"{source}: output_index must be an int or a key, got {v!r}")
            cfg.output_index = v
        if data.get("kwargs") is not None:
            if not isinstance(data["kwargs"], dict):
                raise ValueError(f"{source}: kwargs must be a mapping, got {type(data['kwargs']).__name__}")
            cfg.kwargs = dict(data["kwargs"])
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TeacherConfig:
        return cls.from_mapping(read_yaml_mapping(path), str(path))

    def over(self, base: TeacherConfig) -> TeacherConfig:
        """Settings of ``self`` where given, else those of ``base``."""
        out = replace(base)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "kwargs":
                out.kwargs = {**base.kwargs, **v}
            elif v is not None:
                setattr(out, f.name, v)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "num_outputs": self.num_outputs,
            "output": self.output,
            "channel_order": self.channel_order,
            "output_index": self.output_index,
            "kwargs": dict(self.kwargs),
        }


def _parse_size(v: Any, where: str) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"{where} must be an int or [H, W], got {v!r}")
    if isinstance(v, int):
        v = [v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 and x >= 1 for x in v):
        raise ValueError(f"{where} must be a positive int or [H, W], got {v!r}")
    return int(v[0]), int(v[1])


def _parse_triple(v: Any, where: str, positive: bool = False) -> tuple[float, float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(f"{where} must be three numbers (R G B), got {v!r}")
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be three numbers (R G B), got {v!r}") from None
    if not all(math.isfinite(x) for x in out) or (positive and not all(x > 0 for x in out)):
        raise ValueError(f"{where} must be finite{' and > 0' if positive else ''}, got {v!r}")
    return out  # type: ignore[return-value]


def parse_teacher_spec(spec: str) -> tuple[str, str, str | None]:
    """Split a spec into ``(kind, target, extra)``.

    ``torchscript:PATH`` -> ("torchscript", PATH, None); ``timm:NAME:CKPT`` -> ("timm", NAME, CKPT);
    ``module:pkg.mod:function`` -> ("module", "pkg.mod", "function").
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"teacher spec {spec!r} must look like KIND:TARGET with KIND one of {TEACHER_KINDS}")
    kind, rest = spec.split(":", 1)
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher spec {spec!r}: unknown kind {kind!r}; expected one of {TEACHER_KINDS}")
    if not rest:
        raise ValueError(f"teacher spec {spec!r}: nothing after '{kind}:'")
    if kind == "timm":
        name, _, ckpt = rest.partition(":")
        return kind, name, ckpt or None
    if kind == "module":
        mod, sep, func = rest.rpartition(":")
        if not sep or not mod or not func.isidentifier():
            raise ValueError(f"teacher spec {spec!r}: expected module:package.module:function")
        return kind, mod, func
    return kind, rest, None


def sidecar_config_path(path: str | os.PathLike) -> Path | None:
    """The YAML next to a teacher file: ``teacher.pt`` -> ``teacher.yaml`` / ``teacher.yml`` /
    ``teacher.pt.yaml``, whichever exists first (``None`` if none does)."""
    p = Path(path)
    for cand in (p.with_suffix(".yaml"), p.with_suffix(".yml"), p.with_name(p.name + ".yaml")):
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------------------------------
# runners: a teacher-normalised batch -> raw output


@dataclass
class _Loaded:
    run: Callable[[Tensor], Any]
    module: nn.Module | None = None
    defaults: TeacherConfig = field(default_factory=TeacherConfig)
    to_device: Callable[[torch.device], None] | None = None
    params: int | None = None
    onnx_path: str | None = None


def _trim(out: Any, n: int) -> Any:
    if isinstance(out, Tensor):
        return out[:n]
    if isinstance(out, dict):
        return {k: _trim(v, n) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_trim(v, n) for v in out)
    return out


def _cat(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.cat(outs)
    if isinstance(first, dict):
        return {k: _cat([o[k] for o in outs]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([o[i] for o in outs]) for i in range(len(first)))
    raise TeacherOutputError(f"teacher returned a {type(first).__name__}; expected tensors")


def _chunked(run: Callable[[Tensor], Any], fixed_batch: int | None) -> Callable[[Tensor], Any]:
    """Run a program compiled for a fixed batch size on any batch (the last chunk is padded)."""
    if not fixed_batch:
        return run

    def wrapped(x: Tensor) -> Any:
        outs = []
        for start in range(0, x.shape[0], fixed_batch):
            chunk = x[start:start + fixed_batch]
            n = chunk.shape[0]
            if n < fixed_batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(fixed_batch - n, *chunk.shape[1:])])
            outs.append(_trim(run(chunk), n))
        return _cat(outs)

    return wrapped


def _module_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _load_torchscript(path: str) -> _Loaded:
    with warnings.catch_warnings():
        # TorchScript is deprecated but remains the format of many frozen models; we support it knowingly.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(path, map_location="cpu")
        except (RuntimeError, ValueError) as e:
            reason = str(e).split(". This is an internal miniz error", 1)[0]  # drop torch's advice paragraph
            hint = " (a suite checkpoint is not TorchScript: give torch.jit.save's file)" if "constants.pkl" in reason else ""
            raise ValueError(f"cannot load TorchScript teacher {path}: {reason}{hint}") from e
    module.eval()
    return _Loaded(run=module, module=module, params=_module_params(module))


def _static_input_shape(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in shape)


def _load_export(path: str) -> _Loaded:
    try:
        program = torch.export.load(path)
    except Exception as e:  # torch.export raises several error types for bad archives
        raise ValueError(f"cannot load torch.export teacher {path}: {type(e).__name__}: {e}") from e
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise ValueError(f"export teacher {path} takes {len(user_inputs)} inputs {user_inputs}; "
                         "expected one image batch")
    shape: tuple[int | None, ...] = ()
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            if val is not None:
                shape = _static_input_shape([d if isinstance(d, int) else None for d in val.shape])
    module = program.module()  # train/eval mode was fixed at export time; eval() is not supported
    defaults = TeacherConfig()
    if len(shape) == 4 and shape[2] and shape[3]:
        defaults.input_size = (shape[2], shape[3])
    fixed_batch = shape[0] if len(shape) == 4 else None
    return _Loaded(run=_chunked(module, fixed_batch), module=module, defaults=defaults, params=_module_params(module))


def _load_onnx(path: str, device: torch.device) -> _Loaded:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a declared dependency
        raise ImportError("onnx: teachers need the onnxruntime package") from e
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(path, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load ONNX teacher {path}: {type(e).__name__}: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"ONNX teacher {path} takes {len(inputs)} inputs {[i.name for i in inputs]}; "
                         "expected one image batch")
    inp = inputs[0]
    if inp.type not in ("tensor(float)", "tensor(float16)"):
        raise ValueError(f"ONNX teacher {path}: input {inp.name!r} has type {inp.type}; expected a float tensor")
    np_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    shape = _static_input_shape(inp.shape)
    defaults = TeacherConfig()
    if len(shape) == 4 and shape[2] and shape[3]:
        defaults.input_size = (shape[2], shape[3])
    fixed_batch = shape[0] if len(shape) == 4 else None

    def run(x: Tensor) -> Tensor:
        outs = session.run(None, {inp.name: x.detach().cpu().numpy().astype(np_dtype, copy=False)})
        tensors = [torch.from_numpy(np.asarray(o, dtype=np.float32)).to(x.device) for o in outs]
        return tensors[0] if len(tensors) == 1 else tensors

    params = None
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
        params = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    except Exception:  # the count is informative only
        params = None
    return _Loaded(run=_chunked(run, fixed_batch), defaults=defaults, params=params, onnx_path=path)


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_timm(name: str, checkpoint: str | None, cfg: TeacherConfig) -> _Loaded:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"timm teacher: unknown timm model {name!r}")
    kwargs = dict(cfg.kwargs)
    if checkpoint is not None:
        from backbone.pretrained import read_state_dict

        state = _strip_prefix(read_state_dict(checkpoint), "module.")
        probe = timm.create_model(name, pretrained=False)
        head = probe.pretrained_cfg.get("classifier") or ""
        head = head[0] if isinstance(head, (list, tuple)) else head
        w = state.get(f"{head}.weight")
        if "num_classes" not in kwargs:
            if w is not None:
                kwargs["num_classes"] = int(w.shape[0])
            elif cfg.num_outputs is not None:
                kwargs["num_classes"] = cfg.num_outputs
        del probe
        model = timm.create_model(name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"timm teacher {name!r}: checkpoint {checkpoint} does not fit the model: {e}") from e
    else:
        if cfg.num_outputs is not None:
            kwargs.setdefault("num_classes", cfg.num_outputs)
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # network / hub errors
            raise ValueError(f"timm teacher {name!r}: could not fetch pretrained weights ({type(e).__name__}: {e}); "
                             f"give a local checkpoint as timm:{name}:PATH") from e
    model.eval()
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    defaults = TeacherConfig()
    if pcfg.get("input_size"):
        defaults.input_size = (int(pcfg["input_size"][1]), int(pcfg["input_size"][2]))
    if pcfg.get("mean") and len(pcfg["mean"]) == 3:
        defaults.mean = tuple(float(v) for v in pcfg["mean"])  # type: ignore[assignment]
    if pcfg.get("std") and len(pcfg["std"]) == 3:
        defaults.std = tuple(float(v) for v in pcfg["std"])  # type: ignore[assignment]
    return _Loaded(run=model, module=model, defaults=defaults, params=_module_params(model))


def _load_module(mod_name: str, func_name: str, cfg: TeacherConfig) -> _Loaded:
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"module teacher: cannot import {mod_name!r}: {e}") from e
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise ValueError(f"module teacher: {mod_name!r} has no callable {func_name!r}")
    model = factory(**cfg.kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"module teacher {mod_name}:{func_name} returned a {type(model).__name__}, "
                        "expected an nn.Module")
    model.eval()
    defaults = TeacherConfig()
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    size = getattr(model, "input_size", None) or (pcfg.get("input_size")[1:] if pcfg.get("input_size") else None)
    if size is not None:
        defaults.input_size = _parse_size(list(size) if not isinstance(size, int) else size,
                                          f"{mod_name}:{func_name} input_size")
    for key in ("mean", "std"):
        v = getattr(model, key, None) or pcfg.get(key)
        if v is not None:
            setattr(defaults, key, _parse_triple(list(v), f"{mod_name}:{func_name} {key}", positive=key == "std"))
    return _Loaded(run=model, module=model, defaults=defaults, params=_module_params(model))


# --------------------------------------------------------------------------------------------------
# the wrapper


def _select_output(out: Any, index: int | str | None, spec: str) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        if index is None:
            if len(out) == 1:
                return next(iter(out.values()))
            raise TeacherOutputError(f"teacher {spec} returned a dict with keys {sorted(out)}; set output_index "
                                     "to the key of the output to distill")
        if index not in out:
            raise TeacherOutputError(f"teacher {spec}: output_index {index!r} not among {sorted(out)}")
        return out[index]
    if isinstance(out, (list, tuple)):
        if index is None:
            if len(out) == 1:
                return out[0]
            raise TeacherOutputError(f"teacher {spec} returned {len(out)} outputs; set output_index to pick one")
        if not isinstance(index, int) or not -len(out) <= index < len(out):
            raise TeacherOutputError(f"teacher {spec}: output_index {index!r} out of range for {len(out)} outputs")
        return out[index]
    raise TeacherOutputError(f"teacher {spec} returned a {type(out).__name__}; expected a tensor")


class Teacher:
    """A loaded teacher behind one interface (build with :func:`load_teacher`).

    Attributes:
        spec: the spec string it was loaded from.
        kind: one of ``TEACHER_KINDS``.
        config: resolved :class:`TeacherConfig` (``input_size``, ``mean``, ``std`` always set).
        task: the task the outputs are checked against (``None``: only [B, D] is checked).
        module: the ``nn.Module`` for torch teachers (``None`` for ONNX).
        num_outputs: output width, known after the first call (or from the config).
    """

    def __init__(self, spec: str, kind: str, loaded: _Loaded, config: TeacherConfig, task: str | None,
                 device: torch.device) -> None:
        self.spec = spec
        self.kind = kind
        self.config = config
        self.task = task
        self.module = loaded.module
        self.device = torch.device("cpu")
        self.num_outputs: int | None = config.num_outputs
        self._loaded = loaded
        self._checked = False
        self.to(device)

    # ---- placement and description ----------------------------------------------------------------

    def to(self, device: str | torch.device) -> Teacher:
        device = torch.device(device)
        if self.module is not None:
            self.module.to(device)
        self.device = device
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        assert self.config.input_size is not None
        return self.config.input_size

    @property
    def output(self) -> str:
        return self.config.output or ("embedding" if self.task == "embedding" else "logits")

    def num_parameters(self) -> int | None:
        """Parameters of the teacher (all of them, normalisation layers included), if known."""
        return self._loaded.params

    def mult_adds(self) -> int | None:
        """Multiply-adds of one forward pass on one image at ``input_size`` (None if unknown)."""
        from distill.cost import onnx_mult_adds, traced_mult_adds

        h, w = self.input_size
        if self._loaded.onnx_path is not None:
            return onnx_mult_adds(self._loaded.onnx_path, (1, 3, h, w))
        x = torch.zeros(1, 3, h, w, device=self.device)
        with torch.no_grad():
            return traced_mult_adds(lambda t: self._loaded.run(t), x)

    def describe(self) -> str:
        c = self.config
        return (f"{self.spec} ({self.kind}; input {c.input_size[0]}x{c.input_size[1]} {c.channel_order}, "
                f"mean {list(c.mean)}, std {list(c.std)}; output {self.output})")

    # ---- inference ---------------------------------------------------------------------------------

    def prepare(self, images: Tensor, mean: Sequence[float] = (0.0, 0.0, 0.0),
                std: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
        """Convert a batch normalised with ``mean``/``std`` (any size) into the teacher's input."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher input must be an RGB batch [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True).float()
        src_mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        src_std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = x * src_std + src_mean
        h, w = self.input_size
        if tuple(x.shape[-2:]) != (h, w):
            down = h < x.shape[-2] or w < x.shape[-1]
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
        if self.config.channel_order == "BGR":
            x = x.flip(1)
        dst_mean = torch.tensor(self.config.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        dst_std = torch.tensor(self.config.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - dst_mean) / dst_std

    @torch.no_grad()
    def run_prepared(self, x: Tensor) -> Tensor:
        """Run on an already prepared batch; returns float32 [B, D] (checked on the first call)."""
        if self.module is not None and self.kind != "export":
            self.module.eval()  # a user's code may have flipped it; the teacher never trains
        raw = _select_output(self._loaded.run(x), self.config.output_index, self.spec)
        out = self._shape_output(raw, x.shape[0])
        return out.float()

    def __call__(self, images: Tensor, *, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
        """Teacher outputs [B, D] (float32, on ``self.device``) for a student batch.

        Args:
            images: [B, 3, H, W] normalised with ``mean``/``std`` (default: plain 0..1 pixels).
            mean, std: the normalisation of ``images``.
        """
        return self.run_prepared(self.prepare(images, mean, std))

    @torch.no_grad()
    def intermediates(self, images: Tensor, indices: Sequence[int], *, mean: Sequence[float] = (0.0, 0.0, 0.0),
                      std: Sequence[float] = (1.0, 1.0, 1.0)) -> list[Tensor]:
        """Intermediate maps for a feature-hint loss (timm and ``module:`` teachers with
        ``forward_intermediates``)."""
        fi = getattr(self.module, "forward_intermediates", None)
        if self.kind not in ("timm", "module") or fi is None:
            raise ValueError(f"teacher {self.spec}: feature hints need a timm: or module: teacher with "
                             "forward_intermediates(); this one only exposes its outputs")
        self.module.eval()
        x = self.prepare(images, mean, std)
        if self.kind == "timm":
            return list(fi(x, indices=list(indices), intermediates_only=True))
        return list(fi(x, list(indices)))

    # ---- checks ------------------------------------------------------------------------------------

    def _shape_output(self, out: Tensor, batch: int) -> Tensor:
        if not isinstance(out, Tensor):
            raise TeacherOutputError(f"teacher {self.spec} returned a {type(out).__name__}; expected a tensor")
        if out.dim() > 2 and all(d == 1 for d in out.shape[2:]):
            out = out.flatten(1)  # [B, D, 1, 1] from a convolutional head
        if out.dim() != 2 or out.shape[0] != batch:
            raise TeacherOutputError(
                f"teacher {self.spec} returned shape {tuple(out.shape)} for a batch of {batch}; the "
                f"{self.task or 'distillation'} task needs [batch, outputs] = [{batch}, D]")
        if not self._checked:
            self.check_output(out)
            self._checked = True
        return out

    def check_output(self, out: Tensor) -> int:
        """Check one output batch against the task and the declared width; returns the width."""
        width = int(out.shape[1])
        where = f"teacher {self.spec}"
        if self.num_outputs is not None and width != self.num_outputs:
            raise TeacherOutputError(
                f"{where} outputs {width} values per image but {self.num_outputs} are expected "
                f"({self._expect_source}); the teacher does not fit this task")
        if self.task == "classification" and width < 2:
            raise TeacherOutputError(f"{where} outputs {width} value per image; classification needs >= 2 classes")
        if not torch.isfinite(out).all():
            raise TeacherOutputError(f"{where} produced NaN/inf outputs")
        if self.output == "probabilities":
            if out.min() < 0 or out.max() > 1:
                raise TeacherOutputError(f"{where} is declared to output probabilities but produced values in "
                                         f"[{float(out.min()):.3g}, {float(out.max()):.3g}]; declare output: logits")
        self.num_outputs = width
        return width

    _expect_source = "teacher config num_outputs"

    def expect_outputs(self, n: int, source: str) -> None:
        """Require ``n`` outputs per image (e.g. the attribute count of the label file ``source``)."""
        if self.config.num_outputs is not None and self.config.num_outputs != n:
            raise TeacherOutputError(f"teacher {self.spec} declares num_outputs={self.config.num_outputs} but "
                                     f"{source} needs {n}")
        if self._checked and self.num_outputs != n:
            raise TeacherOutputError(f"teacher {self.spec} outputs {self.num_outputs} values per image but {source} "
                                     f"needs {n}; the teacher does not fit this task")
        self.num_outputs = n
        self._expect_source = source


def load_teacher(
    spec: str,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_outputs: int | None = None,
    output: str | None = None,
    channel_order: str | None = None,
    config: str | os.PathLike | dict | None = None,
    task: str | None = None,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a teacher from a spec (see the module docstring).

    Args:
        spec: ``torchscript:PATH``, ``export:PATH``, ``onnx:PATH``, ``timm:NAME[:CHECKPOINT]`` or
            ``module:pkg.mod:function``.
        input_size, mean, std, num_outputs, output, channel_order: override the config (CLI flags).
        config: a teacher YAML (path) or mapping; takes precedence over the YAML next to the file.
        task: "classification", "attributes" or "embedding": what the outputs are checked against.
        device: where the teacher runs (ONNX uses CUDA only when onnxruntime-gpu is installed).

    Returns:
        A :class:`Teacher`.

    Raises:
        FileNotFoundError: the teacher file is missing.
        ValueError: bad spec or config, or no input size / mean / std can be found.
    """
    kind, target, extra = parse_teacher_spec(spec)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    device = torch.device(device)
    file_path = extra if kind == "timm" else (target if kind in ("torchscript", "export", "onnx") else None)
    if file_path is not None and not os.path.isfile(file_path):
        raise FileNotFoundError(f"teacher file not found: {file_path} (spec {spec!r})")

    layers: list[TeacherConfig] = []  # lowest priority first
    if file_path is not None and (side := sidecar_config_path(file_path)) is not None:
        layers.append(TeacherConfig.from_yaml(side))
    if isinstance(config, dict):
        layers.append(TeacherConfig.from_mapping(config, "teacher config"))
    elif config is not None:
        layers.append(TeacherConfig.from_yaml(config))
    flags: dict[str, Any] = {"input_size": input_size, "mean": mean, "std": std, "num_outputs": num_outputs,
                             "output": output, "channel_order": channel_order}
    layers.append(TeacherConfig.from_mapping({k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in flags.items() if v is not None}, "teacher arguments"))
    cfg = TeacherConfig()
    for layer in layers:
        cfg = layer.over(cfg)

    if kind == "torchscript":
        loaded = _load_torchscript(target)
    elif kind == "export":
        loaded = _load_export(target)
    elif kind == "onnx":
        loaded = _load_onnx(target, device)
    elif kind == "timm":
        loaded = _load_timm(target, extra, cfg)
    else:
        assert extra is not None
        loaded = _load_module(target, extra, cfg)

    static = loaded.defaults.input_size
    cfg = cfg.over(loaded.defaults)
    if kind in ("export", "onnx") and static is not None and cfg.input_size != static:
        raise ValueError(f"teacher {spec}: the program has a fixed input of {static[0]}x{static[1]} but the config "
                         f"says {cfg.input_size[0]}x{cfg.input_size[1]}")
    missing = [k for k in ("input_size", "mean", "std") if getattr(cfg, k) is None]
    if missing:
        where = f"{Path(file_path).with_suffix('.yaml')}" if file_path else "a --teacher-config YAML"
        raise ValueError(
            f"teacher {spec}: no {', '.join(missing)} declared. Pass --teacher-input-size N --teacher-mean R G B "
            f"--teacher-std R G B, or write {where} with input_size/mean/std")
    if cfg.channel_order is None:
        cfg.channel_order = "RGB"
    if task == "embedding" and cfg.output == "probabilities":
        raise ValueError(f"teacher {spec}: output 'probabilities' does not fit the embedding task")
    return Teacher(spec, kind, loaded, cfg, task, device)
