"""The one flag vocabulary of the suite's commands, and how flags become config overrides.

Every training entry point takes the same flags with the same meaning; each sets one key of the
task's sectioned config (:mod:`tasks.config`), the same key in every task::

    --data-root        data.root         training images (folder, or the task's image root)
    --ann              data.ann          training annotations (COCO JSON, labels CSV, ...)
    --val-data-root    data.val_root     validation images
    --val-ann          data.val_ann      validation annotations
    --workers          data.workers      data-loader workers per process
    --backbone         model.backbone    mobilenet_v1 or a timm model name
    --alpha            model.alpha       width multiplier
    --resolution       model.resolution  input size (the resolution multiplier rho)
    --pretrained-backbone model.pretrained_backbone   state-dict path or "timm"
    --epochs --lr --seed --batch-size --amp   train.*   (tasks.engine.EngineConfig)
    --optimizer --weight-decay --schedule --warmup-iters --eval-every   train.*

plus ``--config`` (the YAML), ``--output-dir``, ``--resume`` and ``--device``, which say where and how
a run happens rather than what it computes. Evaluate, predict and export commands take
``--checkpoint --out-dir --device --batch-size``. Old spellings (``--images``, ``--size``, ...) are
hidden aliases that warn.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Any, Mapping

__all__ = [
    "COMMON_TRAIN_FLAGS",
    "add_alias",
    "add_eval_flags",
    "add_train_flags",
    "flag_overrides",
    "train_parser",
]

# flag dest -> (config key, type, help); the order is the order of --help.
COMMON_TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "data_root": ("data.root", str, "training images (a folder; the task's README section says its layout)"),
    "ann": ("data.ann", str, "training annotation file"),
    "val_data_root": ("data.val_root", str, "validation images"),
    "val_ann": ("data.val_ann", str, "validation annotation file"),
    "workers": ("data.workers", int, "data-loader workers per process"),
    "backbone": ("model.backbone", str, "mobilenet_v1 or a timm model name"),
    "alpha": ("model.alpha", float, "MobileNet width multiplier (paper: 1, 0.75, 0.5, 0.25)"),
    "resolution": ("model.resolution", int, "input size in pixels (the resolution multiplier)"),
    "pretrained_backbone": ("model.pretrained_backbone", str, "backbone weights: a state-dict path, or 'timm'"),
    "epochs": ("train.epochs", int, "training epochs"),
    "lr": ("train.lr", float, "peak learning rate"),
    "batch_size": ("train.batch_size", int, "images per batch and process"),
    "seed": ("train.seed", int, "seed of the initial weights, data order and augmentation"),
    "optimizer": ("train.optimizer", str, "sgd, rmsprop (the paper's) or adamw"),
    "weight_decay": ("train.weight_decay", float, "weight decay (not on depthwise filters, BN and biases)"),
    "schedule": ("train.schedule", str, "cosine, step or constant (per iteration, after warmup)"),
    "warmup_iters": ("train.warmup_iters", int, "linear warmup iterations"),
    "eval_every": ("train.eval_every", int, "evaluate (and maybe save best.pt) every this many epochs"),
}


class _AliasAction(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and warns once."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} is deprecated; use {self.new}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, warning spelling of flag ``new`` (same dest, same type)."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, action=_AliasAction, new=new, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def train_parser(prog: str, description: str, *, default_config: str | None = None) -> argparse.ArgumentParser:
    """A parser with :func:`add_train_flags`; the task adds its own flags to it."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_train_flags(p, default_config=default_config)
    return p


def add_train_flags(parser: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    """The common training flags; every one defaults to None (= keep the config's value)."""
    where = f" (default: {default_config})" if default_config else ""
    parser.add_argument("--config", help=f"experiment YAML; a run's saved config.yaml reproduces it{where}")
    g = parser.add_argument_group("common training flags (each sets one config key)")
    for dest, (key, typ, text) in COMMON_TRAIN_FLAGS.items():
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=f"{text} [{key}]")
    g.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: fp16 on CUDA, bf16 on CPU [train.amp]")
    g.add_argument("--output-dir", help="where config.yaml, metrics.jsonl, checkpoints, summary.json and plots go")
    g.add_argument("--resume", help="a last.pt to continue from, exactly where it stopped")
    g.add_argument("--resume-anyway", action="store_true",
                   help="resume even when the config differs from the checkpoint's (beyond epochs and loading)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--debug", action="store_true", help="show tracebacks of user errors")


def add_eval_flags(parser: argparse.ArgumentParser, *, checkpoint_required: bool = True,
                   batch_size: int = 32) -> None:
    """The flags of evaluate / predict / export commands."""
    parser.add_argument("--checkpoint", required=checkpoint_required, help="best.pt / last.pt of a training run")
    parser.add_argument("--out-dir", help="where the outputs are written")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def flag_overrides(args: argparse.Namespace, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The nested config overrides of the flags that were given (``None`` = not given).

    Args:
        args: parsed flags.
        extra: the task's own flags, dest -> dotted config key (e.g. ``{"arch": "model.arch"}``).
    """
    mapping = {dest: key for dest, (key, _, _) in COMMON_TRAIN_FLAGS.items()}
    mapping["amp"] = "train.amp"
    mapping.update(extra or {})
    out: dict[str, Any] = {}
    for dest, key in mapping.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        _set(out, key, list(value) if isinstance(value, tuple) else value)
    return out
