"""Nearest-neighbour face search over a gallery of identity folders (the use of Section 4.7's embeddings).

Usage:
    python -m tasks.faces.search build --images GALLERY/ --checkpoint best.pt --index gallery.idx [--index-type auto]
    python -m tasks.faces.search add --index gallery.idx --images MORE/            # identity folders
    python -m tasks.faces.search add --index gallery.idx --identity Ann a.jpg b.jpg
    python -m tasks.faces.search remove --index gallery.idx --identity Ann          # or --path FILE
    python -m tasks.faces.search query --index gallery.idx photo.jpg -k 5 [--json]
    python -m tasks.faces.search stats --index gallery.idx

``build`` and ``add`` hash every file first (an image already in the gallery, under any path, is
skipped), embed the new ones with a progress bar and commit them in chunks: each commit is atomic
(see ``tasks.faces.index``), so an interrupted run leaves the last commit intact and rerunning the same
command continues where it stopped. ``add``/``query`` use the checkpoint the gallery was built with
unless ``--checkpoint`` names another; a checkpoint with a different fingerprint is refused.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from datasets.faces import scan_identity_folders
from datasets.images import IMAGE_EXTENSIONS, scan_images
from datasets.io import prepare_output_dir
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.faces.embed import embed_paths, file_sha256
from tasks.faces.index import INDEX_TYPES, FaceIndex, FaceIndexError
from tasks.faces.model import FaceEmbedder, load_face_model

__all__ = ["IngestReport", "build_parser", "ingest", "main"]

DEFAULT_COMMIT_EVERY = 1024


class IngestReport(dict):
    """Counts of an ingest: ``added``, ``duplicates``, ``skipped_bad``, ``commits``."""


def _load_model(checkpoint: str | None, index: FaceIndex | None, device: str) -> tuple[FaceEmbedder, str, str]:
    if checkpoint is None:
        if index is None or not index.model.get("checkpoint"):
            raise ValueError("--checkpoint is required (the gallery does not record its model's checkpoint)")
        checkpoint = index.model["checkpoint"]
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"the gallery's checkpoint {checkpoint} is gone; pass --checkpoint (a checkpoint "
                                    "with the same weights)")
    model, fp = load_face_model(checkpoint, device)
    if index is not None:
        index.check_model(fp)
    return model, fp, str(Path(checkpoint).resolve())


def ingest(
    index: FaceIndex,
    model: FaceEmbedder,
    fingerprint: str,
    items: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    commit_every: int = DEFAULT_COMMIT_EVERY,
    skip_bad_images: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> IngestReport:
    """Embed and add ``(path, identity)`` items, skipping content already in the gallery.

    Commits every ``max(commit_every, len(index) // 10)`` new faces (so rewriting a large index stays
    a small fraction of the work) and once at the end.

    Raises:
        FileNotFoundError / ValueError: a missing or undecodable image (unless ``skip_bad_images``).
    """
    report = IngestReport(added=0, duplicates=0, skipped_bad=0, commits=0)
    todo: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    hashes = []
    for path, _ in tqdm(items, desc="hashing", unit="img", disable=not progress, leave=False, dynamic_ncols=True):
        try:
            hashes.append(file_sha256(path))
        except FileNotFoundError:
            if not skip_bad_images:
                raise FileNotFoundError(f"image not found: {path}") from None
            hashes.append(None)
    known = index.known_hashes([h for h in hashes if h is not None])
    for (path, identity), h in zip(items, hashes):
        if h is None:
            report["skipped_bad"] += 1
            tqdm.write(f"skipped missing image {path}")
        elif h in known or h in seen:
            report["duplicates"] += 1
        else:
            seen.add(h)
            todo.append((path, identity, h))
    if skip_bad_images:
        bad = scan_images([t[0] for t in todo], skip_bad_images=True, progress=progress)
        for err in bad.values():
            tqdm.write(f"skipped: {err}")
        report["skipped_bad"] += len(bad)
        todo = [t for i, t in enumerate(todo) if i not in bad]
    bar = tqdm(total=len(todo), desc="embedding", unit="img", disable=not progress, dynamic_ncols=True)
    start = 0
    while start < len(todo):
        chunk = todo[start:start + max(commit_every, len(index) // 10)]
        emb = embed_paths(model, [c[0] for c in chunk], batch_size=batch_size, device=device, num_workers=num_workers)
        res = index.add(emb, [c[1] for c in chunk], [c[0] for c in chunk], [c[2] for c in chunk],
                        fingerprint=fingerprint)
        report["added"] += len(res.added)
        report["duplicates"] += len(res.duplicates)
        report["commits"] += 1
        bar.update(len(chunk))
        start += len(chunk)
    bar.close()
    return report


def _gallery_items(images: str | None, files: Sequence[str], identity: str | None) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    if images:
        items += [(str(Path(s.path).resolve()), s.identity) for s in scan_identity_folders(images)]
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {f}")
        if not p.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{f} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        items.append((str(p.resolve()), identity or p.resolve().parent.name))
    if not items:
        raise ValueError("nothing to add: give --images DIR (identity folders) and/or image files")
    return items


# --------------------------------------------------------------------------------------------------
# commands


def _cmd_build(args: argparse.Namespace) -> int:
    items = _gallery_items(args.images, [], None)
    idx_dir = prepare_output_dir(args.index, "--index")
    if (idx_dir / "gallery.sqlite").exists():
        if args.overwrite:
            import shutil

            shutil.rmtree(idx_dir)
        else:
            index = FaceIndex.open(idx_dir)
            model, fp, ckpt = _load_model(args.checkpoint, index, args.device)
            print(f"{idx_dir} already holds a gallery of {len(index)} faces built with this model: "
                  "continuing (use --overwrite to start over)")
            return _finish_ingest(index, model, fp, items, args)
    model, fp, ckpt = _load_model(args.checkpoint, None, args.device)
    index = FaceIndex.create(idx_dir, dim=model.cfg.embedding_dim, fingerprint=fp,
                             model={"checkpoint": ckpt, "config": model.cfg.to_dict()}, index_type=args.index_type)
    return _finish_ingest(index, model, fp, items, args)


def _cmd_add(args: argparse.Namespace) -> int:
    items = _gallery_items(args.images, args.files, args.identity)
    index = FaceIndex.open(args.index)
    model, fp, _ = _load_model(args.checkpoint, index, args.device)
    return _finish_ingest(index, model, fp, items, args)


def _finish_ingest(index: FaceIndex, model: FaceEmbedder, fp: str, items: list[tuple[str, str]],
                   args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rep = ingest(index, model, fp, items, batch_size=args.batch_size, device=args.device,
                 commit_every=args.commit_every, skip_bad_images=args.skip_bad_images, num_workers=args.workers)
    dt = time.perf_counter() - t0
    rate = rep["added"] / dt if dt > 0 else 0.0
    print(f"added {rep['added']} face(s) in {rep['commits']} commit(s), skipped {rep['duplicates']} already indexed"
          + (f", {rep['skipped_bad']} bad image(s)" if rep["skipped_bad"] else "")
          + f" | {dt:.1f} s, {rate:.1f} img/s")
    print(index.stats(verify=False).summary())
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    if not args.identity and not args.path:
        raise ValueError("remove needs --identity NAME and/or --path FILE")
    index = FaceIndex.open(args.index)
    path = str(Path(args.path).resolve()) if args.path else None
    n = index.remove(identity=args.identity, path=path)
    if n == 0 and args.path and path != args.path:
        n = index.remove(path=args.path)  # a path stored verbatim
    what = " and ".join(x for x in (f"identity {args.identity!r}" if args.identity else "",
                                    f"path {args.path!r}" if args.path else "") if x)
    print(f"removed {n} face(s) matching {what}; {len(index)} left")
    return 0 if n else 1


def _cmd_query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    index = FaceIndex.open(args.index)
    model, fp, _ = _load_model(args.checkpoint, index, args.device)
    for q in args.images:
        if not Path(q).is_file():
            raise FileNotFoundError(f"query image not found: {q}")
    emb = embed_paths(model, list(args.images), batch_size=args.batch_size, device=args.device,
                      progress="embedding queries" if len(args.images) > 64 and not args.json else False)
    results = index.search(emb, args.k)
    for q, hits in zip(args.images, results):
        if args.json:
            print(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}))
        else:
            print(f"{q}")
            for r, h in enumerate(hits, 1):
                print(f"  {r:2d}. {h.identity:30s} {h.score:7.4f}  {h.path}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    index = FaceIndex.open(args.index, verify_checksum=not args.no_verify)
    st = index.stats(verify=not args.no_verify)
    if args.json:
        print(json.dumps({k: v for k, v in vars(st).items()}, default=str))
    else:
        print(st.summary())
        top = sorted(index.identities().items(), key=lambda kv: -kv[1])[:5]
        if top:
            print("largest identities: " + ", ".join(f"{k} ({v})" for k, v in top))
    return 1 if st.problems else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.faces.search", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, model: bool = True) -> None:
        sp.add_argument("--index", required=True, help="gallery folder (faiss index + SQLite)")
        if model:
            sp.add_argument("--checkpoint", help="face model checkpoint (default: the one the gallery was built with)")
            sp.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
            sp.add_argument("--batch-size", type=int, default=64)

    def ingest_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--commit-every", type=int, default=DEFAULT_COMMIT_EVERY,
                        help="faces per atomic commit (grows to 10%% of the gallery for large ones)")
        sp.add_argument("--skip-bad-images", action="store_true", help="skip missing/undecodable images")
        sp.add_argument("--workers", type=int, default=0, help="decoding workers")

    b = sub.add_parser("build", help="embed identity folders into a new gallery")
    common(b)
    b.add_argument("--images", required=True, help="identity folders root/<identity>/<image>")
    b.add_argument("--index-type", choices=INDEX_TYPES, default="auto",
                   help="flat (exact), ivf, hnsw, or auto: flat for small galleries, ivf for large")
    b.add_argument("--overwrite", action="store_true", help="replace an existing gallery in --index")
    ingest_opts(b)
    b.set_defaults(func=_cmd_build)

    a = sub.add_parser("add", help="add images (new ones only) to a gallery")
    common(a)
    a.add_argument("--images", help="identity folders root/<identity>/<image>")
    a.add_argument("--identity", help="identity of the image files given (default: each file's folder name)")
    a.add_argument("files", nargs="*", help="image files")
    ingest_opts(a)
    a.set_defaults(func=_cmd_add)

    r = sub.add_parser("remove", help="remove faces by identity or path")
    common(r, model=False)
    r.add_argument("--identity")
    r.add_argument("--path")
    r.set_defaults(func=_cmd_remove)

    q = sub.add_parser("query", help="nearest gallery faces of query images")
    common(q)
    q.add_argument("images", nargs="+", help="query image files")
    q.add_argument("-k", type=int, default=5, help="hits per query")
    q.add_argument("--json", action="store_true", help="one JSON object per query image")
    q.set_defaults(func=_cmd_query)

    s = sub.add_parser("stats", help="summary and consistency check of a gallery")
    common(s, model=False)
    s.add_argument("--no-verify", action="store_true", help="skip the checksum/content verification")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_stats)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "commit_every", 1) < 1:
        raise ValueError(f"--commit-every must be >= 1, got {args.commit_every}")
    if hasattr(args, "device"):
        args.device = pick_device(args.device)
    return int(args.func(args))


if __name__ == "__main__":
    run_cli(main)
