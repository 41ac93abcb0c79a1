"""Command-line plumbing shared by ``distill.train`` and ``tasks.attributes``: YAML configs under flags.

Precedence: the parser's defaults < the YAML file (``--config``) < flags given on the command line.
YAML keys are the flags' names (``batch_size`` or ``batch-size``); an ``engine:`` mapping holds
``tasks.engine.EngineConfig`` settings that have no flag. Unknown keys are errors naming the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from tasks.engine import EngineConfig

__all__ = ["ENGINE_FLAGS", "add_engine_flags", "build_engine_config", "parse_with_config", "pick_device"]

# Flags that set EngineConfig fields directly (flag dest -> field).
ENGINE_FLAGS = {
    "epochs": "epochs",
    "lr": "lr",
    "optimizer": "optimizer",
    "weight_decay": "weight_decay",
    "amp": "amp",
    "seed": "seed",
    "eval_every": "eval_every",
    "schedule": "schedule",
    "warmup_iters": "warmup_iters",
}


def add_engine_flags(parser: argparse.ArgumentParser, *, epochs: int, lr: float, optimizer: str,
                     weight_decay: float, schedule: str = "cosine") -> None:
    g = parser.add_argument_group("optimisation (tasks.engine)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--optimizer", choices=("sgd", "rmsprop", "adamw"), default=optimizer)
    g.add_argument("--weight-decay", type=float, default=weight_decay)
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default=schedule)
    g.add_argument("--warmup-iters", type=int, default=0)
    g.add_argument("--eval-every", type=int, default=1)
    g.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    g.add_argument("--seed", type=int, default=0)


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """Apply the flag's type/choices to a YAML value."""
    if value is None:
        return None
    typ = action.type
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    many = action.nargs not in (None, "?")
    values = value if many else [value]
    if many and not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list, got {value!r}")
    if many and isinstance(action.nargs, int) and len(values) != action.nargs:
        raise ValueError(f"{where} needs {action.nargs} values, got {len(values)}")
    out = []
    for v in values:
        if typ is not None and not isinstance(v, (list, dict)):
            if typ in (int, float) and isinstance(v, bool):
                raise ValueError(f"{where}: {v!r} is not a valid {typ.__name__}")
            if typ is int and isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{where}: {v!r} is not a valid int")
            try:
                v = typ(v)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {v!r} is not a valid {getattr(typ, '__name__', 'value')}") from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{where}: {v!r} is not one of {list(action.choices)}")
        out.append(v)
    return out if many else out[0]


def parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, default_config: str | os.PathLike | None = None
) -> tuple[argparse.Namespace, dict[str, Any], set[str]]:
    """Parse ``argv``, then fill every flag not given on the command line from the YAML config.

    Args:
        parser: needs a ``--config`` option.
        argv: arguments (``None``: ``sys.argv[1:]``).
        default_config: YAML used when ``--config`` is not given (e.g. the embedded default).

    Returns:
        (args, engine settings from the YAML's ``engine:`` mapping, names of flags given explicitly).
    """
    args = parser.parse_args(argv)
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        explicit = set(vars(parser.parse_args(argv)))
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    path = args.config or default_config
    engine: dict[str, Any] = {}
    if path is None:
        return args, engine, explicit
    path = Path(path)
    if not path.is_file():
        parser.error(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        parser.error(f"{path} is not valid YAML: {e}")
    if not isinstance(data, dict):
        parser.error(f"{path}: a config must be a mapping of flag names to values")
    engine = data.pop("engine", None) or {}
    if not isinstance(engine, dict):
        parser.error(f"{path}: 'engine' must be a mapping of EngineConfig settings")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            parser.error(f"{path}: unknown setting {key!r}; known: {sorted(actions)} and 'engine'")
        if dest in explicit:
            continue
        try:
            setattr(args, dest, _coerce(actions[dest], value, f"{path}: {key}"))
        except ValueError as e:
            parser.error(str(e))
    return args, engine, explicit


def build_engine_config(args: argparse.Namespace, engine: dict[str, Any], explicit: set[str], *,
                        metric: str, metric_mode: str, source: str = "config") -> EngineConfig:
    """EngineConfig from the YAML ``engine:`` mapping with the engine flags on top.

    A flag overrides the YAML ``engine:`` value only when given on the command line or when the
    YAML's ``engine:`` does not set that field.
    """
    settings = dict(engine)
    for dest, name in ENGINE_FLAGS.items():
        if hasattr(args, dest) and (dest in explicit or name not in settings):
            settings[name] = getattr(args, dest)
    settings.setdefault("metric", metric)
    settings.setdefault("metric_mode", metric_mode)
    return EngineConfig.from_dict(settings, source=source)


def pick_device(name: str | None) -> torch.device:
    """``--device``: default "cuda" when available, else "cpu"; an unavailable CUDA is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev
