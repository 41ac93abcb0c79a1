"""Fine-grained recognition (MobileNets paper, Section 4.3): training throughput and the noisy-web recipe.

Two measurements, in one run:

1. **Training images/s, our loop against a plain timm + torch loop**, on the same model and the same
   images: 1.0 MobileNet (ours, ``tasks.finegrained.train``'s data, engine and checkpoints) against timm's
   ``mobilenetv1_100`` (the same network) in a hand-written loop (torchvision ``ImageFolder``, the same
   augmentation as ours, AdamW, no checkpoints). Each loop runs in its own process (torch's thread pool
   is per process) with the same threads and data-loader workers; rounds alternate which goes first;
   the ratio ours / plain is the median over rounds. The target is >= 0.95.
2. **Clean-only against noisy web pretraining + fine-tuning** on the built-in synthetic set, with the
   default config (``configs/finegrained/synthetic.yaml``) and each stage-1 loss (``--losses``): test
   top-1 after stage 1, after stage 2, of the clean-only twin with stage 2's budget, and the gain.

Usage:
    python -m benchmarks.finegrained [--rounds 3] [--steps 20] [--losses gce bootstrap small_loss ce]
        [--skip-throughput] [--skip-recipe] [--write-docs]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.distill import _machine  # noqa: E402
from datasets.io import replace_markdown_section  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Fine-grained (`benchmarks/finegrained.py`)"


# --------------------------------------------------------------------------------------------------
# 1. throughput: one loop per process


def _child_ours(root: str, steps: int, batch: int, resolution: int, workers: int, epochs: int) -> float:
    import torch
    from torch.utils.data import Subset

    from tasks.config import config_to_dict
    from tasks.distributed import DistInfo
    from tasks.engine import fit
    from tasks.finegrained import train as fg

    cfg = fg.resolve_config(fg.build_parser().parse_args(
        ["--data-root", root, "--alpha", "1.0", "--resolution", str(resolution), "--batch-size", str(batch),
         "--epochs", str(epochs), "--workers", str(workers), "--warmup-iters", "0"]))
    dist = DistInfo()
    data = fg._prepare(cfg, dist)
    job = fg._build(cfg, data, dist)
    subset = Subset(job.train_set, range(min(len(job.train_set), steps * batch)))
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        fit(job.model, subset, cfg=cfg.train, output_dir=out, loss_fn=job.loss_fn, evaluate_fn=None,
            num_workers=workers, device=dist.device, meta=job.meta, config_dict=config_to_dict(cfg))
        return time.perf_counter() - t


def _child_plain(root: str, steps: int, batch: int, resolution: int, workers: int, epochs: int) -> float:
    import timm
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from tasks.finegrained import train as fg

    cfg = fg.resolve_config(fg.build_parser().parse_args(["--data-root", root]))
    d = cfg.data
    tf = transforms.Compose([
        transforms.RandomResizedCrop(resolution, scale=tuple(d.crop_scale)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(d.jitter, d.jitter, d.jitter),
        transforms.ToTensor(),
        transforms.Normalize(d.mean, d.std),
    ])
    folder = datasets.ImageFolder(os.path.join(root, "Images"), transform=tf)
    subset = Subset(folder, range(min(len(folder), steps * batch)))
    loader = DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False)
    model = timm.create_model("mobilenetv1_100", num_classes=len(folder.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model.train()
    t = time.perf_counter()
    for _ in range(epochs):
        for images, targets in loader:
            loss = F.cross_entropy(model(images), targets, label_smoothing=cfg.loss.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t


def _run_child(kind: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "benchmarks.finegrained", "--child", kind, "--data", args.data,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--resolution", str(args.resolution),
           "--workers", str(args.workers), "--epochs", str(args.epochs), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} loop failed:\n{res.stderr[-3000:]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    images = args.steps * args.batch_size * args.epochs
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(args.rounds):
        for kind in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
            times[kind].append(_run_child(kind, args))
            print(f"round {r + 1}/{args.rounds} {kind}: {images / times[kind][-1]:.1f} images/s", flush=True)
    ratios = [p / o for o, p in zip(times["ours"], times["plain"])]
    return {"images": images, "ours_img_s": images / statistics.median(times["ours"]),
            "plain_img_s": images / statistics.median(times["plain"]), "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)], "rounds": args.rounds}


# --------------------------------------------------------------------------------------------------
# 2. the recipe: clean-only vs noisy web pretraining + fine-tuning, per stage-1 loss


def recipe(losses: Sequence[str], out: Path) -> dict[str, Any]:
    import yaml

    from tasks.finegrained.train import DEFAULT_CONFIG

    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg.setdefault("noisy", {})["compare_clean_only"] = False
    out.mkdir(parents=True, exist_ok=True)
    no_twin = out / "default_without_clean_only.yaml"
    no_twin.write_text(yaml.safe_dump(cfg))
    rows = {}
    for i, loss in enumerate(losses):
        run = out / loss
        cmd = [sys.executable, "-m", "tasks.finegrained.train", "--output-dir", str(run), "--noisy-loss", loss]
        if i == 0:
            cmd.append("--compare-clean-only")  # the clean-only twin does not depend on the stage-1 loss
        else:  # the default config compares; the later losses skip the (identical) twin
            cmd += ["--config", str(no_twin)]
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
        s = json.loads((run / "summary.json").read_text())
        rows[loss] = {"stage1_top1": s["stages"]["web_pretrain"]["top1"], "stage2_top1": s["stages"]["finetune"]["top1"],
                      "clean_only_top1": s["stages"].get("clean_only", {}).get("top1"), "web": s["web"],
                      "wall_s": time.perf_counter() - t}
        print(f"{loss}: stage 1 {100 * rows[loss]['stage1_top1']:.1f}%, stage 2 {100 * rows[loss]['stage2_top1']:.1f}% "
              f"({rows[loss]['wall_s']:.0f} s)", flush=True)
    clean = next(r["clean_only_top1"] for r in rows.values() if r["clean_only_top1"] is not None)
    web_root = Path(next(iter(rows.values()))["web"]["source"])  # the built-in set: <root>/web
    wrong = json.loads((web_root.parent / "web_manifest.json").read_text())["wrong_label_fraction"]
    return {"rows": rows, "clean_only_top1": clean, "wrong_label_fraction": wrong}


def markdown(machine: dict[str, str], tp: dict[str, Any] | None, rc: dict[str, Any] | None,
             args: argparse.Namespace) -> str:
    lines = [SECTION, "", f"`python -m benchmarks.finegrained` on {machine['date']}: {machine['cpu']}, nproc "
             f"{machine['nproc']}, load average {machine['load']} (1/5/15 min). Python {machine['python']}, torch "
             f"{machine['torch']}, torchvision {machine['torchvision']}, timm {machine['timm']}.", ""]
    if tp is not None:
        lo, hi = tp["ratio_range"]
        lines += [f"Training throughput, 1.0 MobileNet at {args.resolution} px, batch {args.batch_size}, "
                  f"{args.threads} threads, {args.workers} data-loader workers, {tp['images']} images per run, "
                  f"{tp['rounds']} interleaved rounds, each loop in its own process:", "",
                  "| loop | images/s |", "|---|---|",
                  f"| ours (`tasks.finegrained.train`'s data, engine, checkpoints) | {tp['ours_img_s']:.1f} |",
                  f"| plain timm `mobilenetv1_100` + torch loop | {tp['plain_img_s']:.1f} |",
                  f"| **ours / plain** (target >= 0.95) | **{tp['ratio']:.2f}x** (rounds {lo:.2f}-{hi:.2f}) |", ""]
    if rc is not None:
        w = next(iter(rc["rows"].values()))["web"]
        lines += [f"The recipe on the built-in set (default config; web set {w['listed']} images, "
                  f"{100 * rc['wrong_label_fraction']:.0f}% wrong labels, {w['removed_exact_duplicates']} exact + "
                  f"{w['removed_near_duplicates']} near copies of test images removed). Test top-1 of each "
                  f"stage's best.pt (chosen on validation); clean-only: the same stage-2 budget from scratch, "
                  f"{100 * rc['clean_only_top1']:.1f}%:", "",
                  "| stage-1 loss | after stage 1 (web only) | after stage 2 (fine-tuned) | gain over clean-only |",
                  "|---|---|---|---|"]
        for loss, r in rc["rows"].items():
            lines.append(f"| {loss} | {100 * r['stage1_top1']:.1f}% | {100 * r['stage2_top1']:.1f}% | "
                         f"{100 * (r['stage2_top1'] - rc['clean_only_top1']):+.1f} points |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps per epoch of each timed run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", help="a Stanford Dogs layout folder (default: the built-in synthetic set)")
    p.add_argument("--losses", nargs="+", default=["gce", "bootstrap", "small_loss", "ce"])
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-recipe", action="store_true")
    p.add_argument("--write-docs", action="store_true", help=f"replace the section of {DOCS.relative_to(ROOT)}")
    p.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        fn = _child_ours if args.child == "ours" else _child_plain
        print(json.dumps({"seconds": fn(args.data, args.steps, args.batch_size, args.resolution, args.workers,
                                        args.epochs)}))
        return 0
    if args.data is None:
        from datasets.synthetic_finegrained import ensure_synthetic_dogs
        from tasks.config import read_yaml_mapping
        from tasks.finegrained.train import DEFAULT_CONFIG

        args.data = ensure_synthetic_dogs(progress=True, **read_yaml_mapping(DEFAULT_CONFIG)["data"]["synthetic"])
    machine = _machine()
    tp = None if args.skip_throughput else throughput(args)
    with tempfile.TemporaryDirectory() as tmp:
        rc = None if args.skip_recipe else recipe(args.losses, Path(tmp))
    text = markdown(machine, tp, rc, args)
    print(text)
    if args.write_docs:
        replace_markdown_section(DOCS, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
