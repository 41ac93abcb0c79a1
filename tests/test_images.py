"""The one image decoder (datasets.images.load_rgb_image) on every odd format, and every loader using it.

Each format is written here from known pixels, so each check fails when decoding goes wrong in the way
that format invites: 16-bit clipped to white, alpha dropped to black, EXIF ignored, CMYK or palette
mis-converted, a wrong extension trusted.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.coco import CocoDetection
from datasets.faces import IdentityFolder
from datasets.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageFiles,
    is_image_file,
    load_readable,
    load_rgb_image,
    scan_images,
)


def _center(img: Image.Image) -> list[int]:
    assert img.mode == "RGB"
    w, h = img.size
    return list(img.getpixel((w // 2, h // 2)))


def _png16(path: Path, pixels: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs): 0 grey, 2 RGB, 6 RGBA."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# ---- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(65535, 255), (32768, 128), (1000, 4), (0, 0)])
def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, value, expected):
    Image.fromarray(np.full((6, 8), value, np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I;16")  # the case Pillow's own convert("RGB") clips to white
    assert _center(load_rgb_image(tmp_path / "deep.png")) == [expected] * 3


def test_16bit_rgb_png_and_tiff(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 1000
    _png16(tmp_path / "rgb16.png", rgb, color_type=2)
    assert _center(load_rgb_image(tmp_path / "rgb16.png")) == [255, 128, 3]
    Image.fromarray(np.full((4, 5), 1000, np.uint16)).save(tmp_path / "grey16.tif")
    assert _center(load_rgb_image(tmp_path / "grey16.tif")) == [4, 4, 4]


def test_32bit_int_and_float_images(tmp_path):
    Image.fromarray(np.full((4, 5), 0.5, np.float32)).save(tmp_path / "unit.tif")  # float in [0, 1]
    assert _center(load_rgb_image(tmp_path / "unit.tif")) == [128] * 3
    Image.fromarray(np.full((4, 5), 100, np.int32)).save(tmp_path / "small.tif")  # 8-bit range kept
    assert _center(load_rgb_image(tmp_path / "small.tif")) == [100] * 3
    Image.fromarray(np.full((4, 5), 65535, np.int32)).save(tmp_path / "wide.tif")  # taken as 16-bit
    assert _center(load_rgb_image(tmp_path / "wide.tif")) == [255] * 3


def test_alpha_is_composited_over_white(tmp_path):
    Image.new("RGBA", (6, 4), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(tmp_path / "clear.png")  # hidden colour must not show
    Image.new("RGBA", (6, 4), (0, 0, 0, 128)).save(tmp_path / "half.png")
    Image.new("LA", (6, 4), (0, 0)).save(tmp_path / "grey_alpha.png")
    rgba16 = np.zeros((4, 6, 4), np.uint16)  # 16-bit RGBA, fully transparent black
    _png16(tmp_path / "rgba16.png", rgba16, color_type=6)
    assert _center(load_rgb_image(tmp_path / "opaque.png")) == [10, 20, 30]
    assert _center(load_rgb_image(tmp_path / "clear.png")) == [255, 255, 255]
    assert _center(load_rgb_image(tmp_path / "half.png")) == [127] * 3
    assert _center(load_rgb_image(tmp_path / "grey_alpha.png")) == [255, 255, 255]
    assert _center(load_rgb_image(tmp_path / "rgba16.png")) == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * (3 * 254))
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "pal_clear.png", transparency=1)
    pal.save(tmp_path / "pal.gif")
    assert _center(load_rgb_image(tmp_path / "pal.png")) == [200, 30, 40]
    assert _center(load_rgb_image(tmp_path / "pal_clear.png")) == [255, 255, 255]
    assert _center(load_rgb_image(tmp_path / "pal.gif")) == [200, 30, 40]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure magenta ink
    with Image.open(tmp_path / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    r, g, b = _center(load_rgb_image(tmp_path / "cmyk.jpg"))
    assert r > 240 and g < 15 and b > 240


def test_grayscale_and_1bit(tmp_path):
    Image.new("L", (6, 4), 77).save(tmp_path / "grey.png")
    Image.new("L", (6, 4), 77).save(tmp_path / "grey.pgm")
    Image.new("1", (6, 4), 1).save(tmp_path / "bw.png")
    assert _center(load_rgb_image(tmp_path / "grey.png")) == [77] * 3
    assert _center(load_rgb_image(tmp_path / "grey.pgm")) == [77] * 3
    assert _center(load_rgb_image(tmp_path / "bw.png")) == [255] * 3


def _exif_rotated_jpeg(path: Path) -> None:
    """Stored 40 wide x 20 tall, left half red, right half blue; EXIF 6 says "rotate 90 CW to display"."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)


def test_exif_rotation_is_applied(tmp_path):
    _exif_rotated_jpeg(tmp_path / "rot.jpg")
    img = load_rgb_image(tmp_path / "rot.jpg")
    assert img.size == (20, 40)  # displayed: 20 wide, 40 tall
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 50  # the stored left (red) is displayed on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_png_named_jpg_is_read_by_content(tmp_path):
    Image.new("RGBA", (6, 4), (1, 2, 3, 0)).save(tmp_path / "actually_png.jpg", format="PNG")
    assert _center(load_rgb_image(tmp_path / "actually_png.jpg")) == [255, 255, 255]  # PNG alpha honoured


def test_bad_files_raise_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_rgb_image(tmp_path / "gone.jpg")
    (tmp_path / "text.jpg").write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        load_rgb_image(tmp_path / "text.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="cut.jpg"):  # ImageDecodeError is a ValueError
        load_rgb_image(tmp_path / "cut.jpg")


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".pgm", ".ppm"} <= set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.JPG") and is_image_file("x.tiff")
    assert not is_image_file(".hidden.jpg") and not is_image_file("notes.txt") and not is_image_file("a.jpg.txt")


# ---- the bad-image scan -------------------------------------------------------------------------------


def _mixed_folder(tmp_path: Path) -> list[str]:
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "0.png")
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.new("RGB", (4, 4), (8, 8, 8)).save(tmp_path / "2.png")
    return [str(tmp_path / n) for n in ("0.png", "1.jpg", "2.png", "3_missing.png")]


def test_scan_images_reports_or_raises(tmp_path):
    paths = _mixed_folder(tmp_path)
    bad = scan_images(paths, skip_bad_images=True, num_threads=2)
    assert sorted(bad) == [1, 3]
    assert "1.jpg" in bad[1] and "3_missing.png" in bad[3]
    with pytest.raises(ValueError, match=r"2 images cannot be decoded: .*1\.jpg.*3_missing\.png"):
        scan_images(paths, skip_bad_images=False, num_threads=2)
    assert scan_images(paths[:1], skip_bad_images=False) == {}


def test_load_readable_serves_the_next_good_image(tmp_path):
    paths = _mixed_folder(tmp_path)
    bad: set[int] = set()
    j, img = load_readable(paths, 1, bad, skip_bad_images=True)
    assert j == 2 and bad == {1} and _center(img) == [8, 8, 8]
    j, _ = load_readable(paths, 3, bad, skip_bad_images=True)  # wraps around past the end
    assert j == 0 and bad == {1, 3}
    with pytest.raises(ImageDecodeError, match="1.jpg"):
        load_readable(paths, 1, set(), skip_bad_images=False)
    with pytest.raises(ValueError, match="none of the 2 images"):
        load_readable(paths[1::2], 0, set(), skip_bad_images=True)


# ---- every loader decodes through it -------------------------------------------------------------------


def _odd_images(folder: Path) -> dict[str, list[int]]:
    """Files of odd formats and the centre pixel each must decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 20), 32768, np.uint16)).save(folder / "deep.png")
    Image.new("RGBA", (20, 40), (10, 20, 30, 0)).save(folder / "clear.png")
    Image.new("CMYK", (20, 40), (0, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)
    Image.new("L", (20, 40), 77).save(folder / "grey.png")
    Image.new("RGB", (20, 40), (1, 2, 3)).save(folder / "png_named.jpg", format="PNG")
    return {"deep.png": [128] * 3, "clear.png": [255] * 3, "cmyk.jpg": [255] * 3, "grey.png": [77] * 3,
            "png_named.jpg": [1, 2, 3]}


def _centre_of(tensor: torch.Tensor) -> list[int]:
    t = tensor.float() * 255.0 if tensor.is_floating_point() else tensor.float()
    return [int(v) for v in t[:, t.shape[1] // 2, t.shape[2] // 2].round()]


def _assert_close(got: dict[str, list[int]], expected: dict[str, list[int]]) -> None:
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():  # a unit or two of JPEG rounding, nothing like a format error
        assert all(abs(a - b) <= 2 for a, b in zip(got[name], want)), (name, got[name], want)


def test_image_folder_identity_folder_and_coco_agree(tmp_path):
    expected = _odd_images(tmp_path / "person")
    names = sorted(expected)

    files = ImageFiles(names, root=tmp_path / "person")
    _assert_close({n: _centre_of(files[i]["image"]) for i, n in enumerate(files.names)}, expected)

    faces = IdentityFolder(tmp_path, resolution=8)  # root/<identity>/<image>
    _assert_close({Path(s.path).name: _centre_of(faces[i][0]) for i, s in enumerate(faces.samples)}, expected)

    coco = {"images": [{"id": i + 1, "file_name": n, "width": 20, "height": 40} for i, n in enumerate(names)],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    det = CocoDetection(str(tmp_path / "person"), str(tmp_path / "ann.json"))
    _assert_close({names[t["image_id"] - 1]: _centre_of(image) for image, t in (det[i] for i in range(len(det)))},
                  expected)


def test_exif_rotation_in_every_loader(tmp_path):
    (tmp_path / "p").mkdir()
    _exif_rotated_jpeg(tmp_path / "p" / "rot.jpg")
    assert ImageFiles(["rot.jpg"], root=tmp_path / "p")[0]["image"].shape == (3, 40, 20)
    coco = {"images": [{"id": 1, "file_name": "rot.jpg", "width": 20, "height": 40}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    image, t = CocoDetection(str(tmp_path / "p"), str(tmp_path / "ann.json"))[0]
    assert image.shape == (3, 40, 20) and t["orig_size"].tolist() == [40, 20]
    face = IdentityFolder(tmp_path, resolution=8, center_crop=1.0)[0][0]
    # The displayed image is red above blue; the centre square crop keeps that order.
    assert face[0, 1].mean() > face[0, -2].mean() and face[2, -2].mean() > face[2, 1].mean()
