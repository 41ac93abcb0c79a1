"""Fine-grained data (datasets.stanford_dogs): the Stanford Dogs layout, class folders and CSVs, the box rule,
the odd files, stratified validation, and a clear error for every bad input.

The Stanford Dogs tree is written by datasets.synthetic_dogs in the real format (scipy.io.savemat cell arrays,
VOC-like XML without extension); each test that damages it works on its own copy.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datasets.images import ImageDecodeError, build_image_transform
from datasets.stanford_dogs import (
    ClassList,
    FineGrainedDataset,
    ImageRecord,
    breed_from_folder,
    clean_boxes,
    detect_format,
    open_finegrained,
    parse_mat_list,
    read_annotation,
    read_class_folders,
    read_label_csv,
    read_mat_list,
    read_stanford_dogs,
    standard_splits,
    stratified_holdout,
)
from datasets.synthetic_dogs import write_annotation_xml, write_mat_list, write_stanford_dogs_layout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dogs_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("dogs") / "StanfordDogs"
    return write_stanford_dogs_layout(root, num_breeds=3, images_per_breed=4, train_per_breed=2)


@pytest.fixture
def dogs(dogs_master, tmp_path):
    """A private copy of the layout (tests may damage it) and the layout's description."""
    root = tmp_path / "dogs"
    shutil.copytree(dogs_master.root, root)
    return root, dogs_master


def _mean_rgb(t: torch.Tensor) -> np.ndarray:
    """Mean colour inside a 2-pixel margin (JPEG's chroma subsampling blurs the edges of a crop)."""
    return t[:, 2:-2, 2:-2].float().mean(dim=(1, 2)).numpy()


# ---- names and classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, wnid, name", [
    ("n02085620-Chihuahua", "n02085620", "Chihuahua"),
    ("n02085782-Japanese_spaniel", "n02085782", "Japanese spaniel"),
    ("n02086240-Shih-Tzu", "n02086240", "Shih-Tzu"),
    ("n02093428-American_Staffordshire__terrier", "n02093428", "American Staffordshire terrier"),
    ("001.Black_footed_Albatross", None, "001.Black footed Albatross"),
])
def test_breed_names_from_folders(folder, wnid, name):
    assert breed_from_folder(folder) == (wnid, name)


def test_class_list_lookup_and_round_trip():
    classes = ClassList.from_keys(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"])
    for label in ("n02085620-Chihuahua", "n02085620", "Chihuahua", "chihuahua"):
        assert classes.lookup(label) == 0
    assert classes.lookup("japanese spaniel") == classes.lookup("Japanese_spaniel") == 1
    assert classes.lookup("pug") is None
    with pytest.raises(ValueError, match="here: unknown class 'pug'"):
        classes.index("pug", "here")
    assert ClassList.from_dict(classes.as_dict()) == classes
    with pytest.raises(ValueError, match="duplicate classes"):
        ClassList.from_keys(["a", "a"])


# ---- .mat lists ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["column", "row"])
@pytest.mark.parametrize("squeeze_me", [False, True])
def test_mat_list_both_nestings(tmp_path, layout, squeeze_me):
    files = ["n02085620-Chihuahua/n02085620_10074.jpg", "n02085782-Japanese_spaniel/n02085782_2.jpg"]
    write_mat_list(tmp_path / "l.mat", files, [0, 1], layout=layout)
    raw = scipy.io.loadmat(tmp_path / "l.mat", squeeze_me=squeeze_me)
    if not squeeze_me:  # the doubly nested form really is what the parser sees
        assert raw["file_list"].dtype == object and isinstance(raw["file_list"].flat[0], np.ndarray)
    got = parse_mat_list(raw, "l.mat")
    assert got.files == files
    assert got.annotations == [f[:-4] for f in files]
    assert got.labels.tolist() == [1, 2] and got.labels.dtype == np.int64
    assert read_mat_list(tmp_path / "l.mat", squeeze_me=squeeze_me).files == files


@pytest.mark.parametrize("squeeze_me", [False, True])
def test_mat_list_with_one_entry(tmp_path, squeeze_me):
    # squeeze_me turns a 1x1 cell and a 1x1 label into a bare str and float.
    write_mat_list(tmp_path / "one.mat", ["a-b/c.jpg"], [4])
    got = read_mat_list(tmp_path / "one.mat", squeeze_me=squeeze_me)
    assert (got.files, got.annotations, got.labels.tolist()) == (["a-b/c.jpg"], ["a-b/c"], [5])


def _good_vars(n: int = 2) -> dict:
    cells = np.empty((n, 1), dtype=object)
    anns = np.empty((n, 1), dtype=object)
    for i in range(n):
        cells[i, 0], anns[i, 0] = f"n02085620-Chihuahua/n02085620_{i}.jpg", f"n02085620-Chihuahua/n02085620_{i}"
    return {"file_list": cells, "annotation_list": anns, "labels": np.ones((n, 1))}


@pytest.mark.parametrize("change, message", [
    (lambda v: v.pop("labels"), r"variable 'labels' missing \(the file has \['annotation_list', 'file_list'\]"),
    (lambda v: v.pop("annotation_list"), "variable 'annotation_list' missing"),
    (lambda v: v.update(file_list=np.full((2, 2), "a.jpg", dtype=object)), r"'file_list' must be a vector.*\(2, 2\)"),
    (lambda v: v.update(labels=np.ones((2, 2))), r"'labels' must be a vector.*\(2, 2\)"),
    (lambda v: v.update(labels=np.ones((3, 1))), "'labels' has 3 entries but 'file_list' has 2"),
    (lambda v: v.update(annotation_list=v["annotation_list"][:1]), "'annotation_list' has 1 entries"),
    (lambda v: v.update(labels=np.array([[1.0], [0.0]])), r"labels\[1\] = 0 is out of range \(labels are 1-indexed\)"),
    (lambda v: v.update(labels=np.array([[1.0], [1.5]])), r"labels\[1\] = 1.5 is not an integer"),
    (lambda v: v.update(labels=np.array([["a"], ["b"]])), "'labels' must be numbers"),
    (lambda v: v["file_list"].__setitem__((1, 0), 7.0), r"file_list\[1\] must be a string"),
    (lambda v: v["file_list"].__setitem__((0, 0), ""), r"file_list\[0\] is an empty string"),
])
def test_malformed_mat_names_the_variable(tmp_path, change, message):
    variables = _good_vars()
    change(variables)
    scipy.io.savemat(tmp_path / "bad.mat", variables)
    with pytest.raises(ValueError, match=message):
        read_mat_list(tmp_path / "bad.mat")


def test_unreadable_or_missing_mat(tmp_path):
    (tmp_path / "junk.mat").write_bytes(b"this is not a MAT file at all" * 10)
    with pytest.raises(ValueError, match="junk.mat is not a readable MAT file"):
        read_mat_list(tmp_path / "junk.mat")
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        read_mat_list(tmp_path / "nope.mat")


# ---- the Stanford Dogs layout --------------------------------------------------------------------------


def test_reads_the_official_layout(dogs_master):
    index = open_finegrained(dogs_master.root)
    assert index.format == "stanford_dogs"
    assert list(index.classes.keys) == dogs_master.folders
    assert list(index.classes.names) == ["Chihuahua", "Japanese spaniel", "Shih-Tzu"]
    assert list(index.classes.wnids) == ["n02085620", "n02085782", "n02086240"]
    for split, want in (("train", dogs_master.train), ("test", dogs_master.test)):
        got = index.split(split)
        assert [(r.name, r.label) for r in got] == want
        assert all(Path(r.path).is_file() and Path(r.annotation).is_file() for r in got)
        assert all(r.source.endswith(f"{split}_list.mat") for r in got)
    with pytest.raises(ValueError, match=r"no split 'val'.*\['test', 'train'\]"):
        index.split("val")


def test_lists_unpacked_at_the_root(dogs):
    root, layout = dogs
    for f in (root / "lists").iterdir():
        f.rename(root / f.name)
    (root / "lists").rmdir()
    assert [(r.name, r.label) for r in read_stanford_dogs(root).split("test")] == layout.test


def test_list_errors_name_file_and_entry(dogs):
    root, layout = dogs
    files = [f for f, _ in layout.train]
    labels = [lab for _, lab in layout.train]
    write_mat_list(root / "lists" / "train_list.mat", files, [9] + labels[1:])
    with pytest.raises(ValueError, match=r"train_list.mat: labels\[0\] = 10 is out of range 1..3"):
        read_stanford_dogs(root)
    write_mat_list(root / "lists" / "train_list.mat", files, [2] + labels[1:])
    with pytest.raises(ValueError, match=r"entry 0 .*Chihuahua.* has label 3 \(n02086240-Shih-Tzu\) but lies in "
                                         r"folder 'n02085620-Chihuahua'"):
        read_stanford_dogs(root)
    write_mat_list(root / "lists" / "train_list.mat", ["../outside.jpg"], [0])
    with pytest.raises(ValueError, match="must be a path inside the data folder"):
        read_stanford_dogs(root)
    (root / "lists" / "test_list.mat").unlink()
    write_mat_list(root / "lists" / "train_list.mat", files, labels)
    with pytest.raises(FileNotFoundError, match="test_list.mat"):
        read_stanford_dogs(root)


def test_annotation_list_must_match_files(dogs):
    root, _ = dogs
    variables = scipy.io.loadmat(root / "lists" / "train_list.mat")
    variables["annotation_list"][0, 0] = np.array(["n02085620-Chihuahua/other"])
    scipy.io.savemat(root / "lists" / "train_list.mat",
                     {k: v for k, v in variables.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match=r"entry 0: annotation_list 'n02085620-Chihuahua/other' does not match"):
        read_stanford_dogs(root)


def test_odd_breed_folder_is_an_error(dogs):
    root, _ = dogs
    (root / "Images" / "misc").mkdir()
    with pytest.raises(ValueError, match="folder 'misc' is not named <wnid>-<breed>"):
        read_stanford_dogs(root)


def test_same_class_same_index_in_every_split(dogs_master):
    splits = standard_splits(open_finegrained(dogs_master.root), val_fraction=0.4, seed=3)
    for name in ("train", "val", "test"):
        for r in splits[name]:
            assert r.label == dogs_master.folders.index(r.name.split("/")[0]), (name, r.name)
    names = {n: {r.name for r in splits[n]} for n in splits}
    assert names["val"] and not names["val"] & names["train"] and not names["val"] & names["test"]
    assert names["train"] | names["val"] == {f for f, _ in dogs_master.train}
    assert Counter(r.label for r in splits["val"]) == {0: 1, 1: 1, 2: 1}  # stratified: one per breed


# ---- annotations and boxes -----------------------------------------------------------------------------


def test_xml_with_several_objects_gives_one_sample_per_box(dogs_master):
    index = open_finegrained(dogs_master.root)
    records = index.split("train")
    two = [r for r in records if len(dogs_master.boxes[r.name[:-4]]) == 2]
    assert two, "the layout must plant two-dog images in the train list"
    ann = read_annotation(two[0].annotation)
    assert ann.boxes.tolist() == dogs_master.boxes[two[0].name[:-4]] and ann.names == ["Chihuahua"] * 2
    assert (ann.width, ann.height) == (40, 32)

    boxed = FineGrainedDataset(records, index.classes, crop="box")
    want = sum(len(dogs_master.boxes[r.name[:-4]]) for r in records)
    assert len(boxed) == want == boxed.stats["boxes"] > len(records) == boxed.stats["images"]
    for i in range(len(boxed)):
        s = boxed[i]
        rec = boxed.record(i)
        assert s["index"] == i and int(s["target"]) == rec.label
        x1, y1, x2, y2 = (int(v) for v in s["box"])
        assert list(s["image"].shape) == [3, y2 - y1, x2 - x1]
        assert [x1, y1, x2, y2] in dogs_master.boxes[rec.name[:-4]]
        colour = np.array(dogs_master.colors[rec.label], dtype=float)
        if rec.name == dogs_master.odd_files.get("grayscale"):
            colour = np.full(3, colour @ [0.299, 0.587, 0.114])
        assert np.abs(_mean_rgb(s["image"]) - colour).max() < 12, rec.name  # the crop is the dog, not background

    whole = FineGrainedDataset(records, index.classes, crop="none")
    assert len(whole) == len(records) and "box" not in whole[0] and whole[0]["image"].shape == (3, 32, 40)


def test_box_rule_clips_and_drops_with_counts(tmp_path):
    objs = [("a", [5, 5, 15, 15]),       # kept as is
            ("a", [-3, 2, 50, 20]),      # clipped to 0..40
            ("a", [10, 10, 10, 20]),     # no width: dropped
            ("a", [20, 5, 12, 9]),       # xmax < xmin: dropped
            ("a", [45, 40, 60, 50])]     # outside the image: nothing left after clipping, dropped
    write_annotation_xml(tmp_path / "x", folder="1", filename="x", width=40, height=32, objects=objs)
    boxes, clipped, dropped = clean_boxes(read_annotation(tmp_path / "x"))
    assert boxes.tolist() == [[5, 5, 15, 15], [0, 2, 40, 20]] and (clipped, dropped) == (1, 3)

    Image.new("RGB", (40, 32), (0, 0, 0)).save(tmp_path / "x.jpg")
    write_annotation_xml(tmp_path / "y", folder="1", filename="y", width=40, height=32,
                         objects=[("a", [50, 50, 60, 60])])
    Image.new("RGB", (40, 32), (0, 0, 0)).save(tmp_path / "y.jpg")
    recs = [ImageRecord(str(tmp_path / "x.jpg"), "x.jpg", 0, str(tmp_path / "x")),
            ImageRecord(str(tmp_path / "y.jpg"), "y.jpg", 0, str(tmp_path / "y"))]
    ds = FineGrainedDataset(recs, ClassList.from_keys(["a"]), crop="box")
    assert len(ds) == 2 and ds.stats["clipped_boxes"] == 1 and ds.stats["degenerate_boxes_dropped"] == 4
    assert ds.stats["images_without_boxes"] == 1
    assert ds[1]["box"].tolist() == [0, 2, 40, 20] and ds[1]["image"].shape == (3, 18, 40)


def test_box_outside_the_decoded_image_names_the_annotation(tmp_path):
    write_annotation_xml(tmp_path / "x", folder="1", filename="x", width=400, height=300,
                         objects=[("a", [100, 100, 200, 200])])  # <size> says 400x300, the file is 40x32
    Image.new("RGB", (40, 32)).save(tmp_path / "x.jpg")
    ds = FineGrainedDataset([ImageRecord(str(tmp_path / "x.jpg"), "x.jpg", 0, str(tmp_path / "x"))],
                            ClassList.from_keys(["a"]), crop="box")
    with pytest.raises(ValueError, match=r"annotation .*/x: box .* lies outside the decoded image .*x.jpg \(40x32\)"):
        ds[0]


@pytest.mark.parametrize("text, message", [
    ("<annotation><object><name>a</name>", "is not valid XML"),
    ("<annotation><size><width>9</width></size></annotation>", "no <object> element"),
    ("<annotation><object><name>a</name></object></annotation>", "object 1 has no <bndbox>"),
    ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object></annotation>",
     "object 1: <bndbox> lacks <ymax>"),
    ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
     "<object><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
     "object 2: <ymin> is not a number: 'one'"),
    ("<annotation><object><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
     "</annotation>", "object 1: <xmin> is not finite"),
])
def test_bad_xml_names_file_and_field(tmp_path, text, message):
    (tmp_path / "n1_1").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_annotation(tmp_path / "n1_1")
    assert "n1_1" in str(err.value)


def test_missing_annotation_in_box_mode(dogs):
    root, layout = dogs
    index = read_stanford_dogs(root)
    Path(index.split("train")[0].annotation).unlink()
    FineGrainedDataset(index.split("train"), index.classes)  # crop="none" needs no annotation
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*n02085620_1000"):
        FineGrainedDataset(index.split("train"), index.classes, crop="box")


def test_crop_modes_are_checked(tmp_path):
    (tmp_path / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "a.jpg")
    index = read_class_folders(tmp_path)
    with pytest.raises(ValueError, match="crop must be one of"):
        FineGrainedDataset(index.split("all"), index.classes, crop="boxes")
    with pytest.raises(ValueError, match="crop='box' needs box annotations, but 'c/a.jpg'"):
        FineGrainedDataset(index.split("all"), index.classes, crop="box")


# ---- odd files and bad images --------------------------------------------------------------------------


def test_odd_files_of_the_real_set_load(dogs_master):
    layout = dogs_master
    assert set(layout.odd_files) == {"png_as_jpg", "grayscale", "cmyk"}
    with Image.open(layout.root / "Images" / layout.odd_files["png_as_jpg"]) as im:
        assert im.format == "PNG"
    with Image.open(layout.root / "Images" / layout.odd_files["cmyk"]) as im:
        assert im.format == "JPEG" and im.mode == "CMYK"
    with Image.open(layout.root / "Images" / layout.odd_files["grayscale"]) as im:
        assert im.mode == "L"
    index = open_finegrained(layout.root)
    records = index.split("train") + index.split("test")
    ds = FineGrainedDataset(records, index.classes, transform=build_image_transform(16, mean=None, std=None))
    assert ds.scan_images() == [] and ds.stats["corrupt_images"] == 0
    by_name = {r.name: i for i, r in enumerate(ds.records)}
    for kind, name in layout.odd_files.items():
        s = ds[by_name[name]]
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32, kind
    # The CMYK file's dog keeps its colour: the conversion is not inverted or dropped to grey.
    raw = FineGrainedDataset([records[[r.name for r in records].index(layout.odd_files["cmyk"])]], index.classes,
                             crop="box")
    assert np.abs(_mean_rgb(raw[0]["image"]) - np.array(layout.colors[1])).max() < 12


def test_missing_listed_file_stops_or_is_skipped(dogs):
    root, layout = dogs
    gone = root / "Images" / layout.train[1][0]
    gone.unlink()
    index = open_finegrained(root)
    with pytest.raises(FileNotFoundError, match=rf"image file not found: {gone} \(listed in .*train_list.mat\)"):
        FineGrainedDataset(index.split("train"), index.classes)
    ds = FineGrainedDataset(index.split("train"), index.classes, skip_bad_images=True, crop="box")
    assert ds.stats["missing_images"] == ds.stats["bad_images_skipped"] == 1
    assert len(ds.records) == len(layout.train) - 1 and str(gone) not in {r.path for r in ds.records}


@pytest.mark.parametrize("crop", ["none", "box"])
def test_corrupt_file_stops_or_is_skipped(dogs, crop):
    root, layout = dogs
    bad_name = layout.train[1][0]  # a two-dog image: in box mode both its samples go
    (root / "Images" / bad_name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    index = open_finegrained(root)
    strict = FineGrainedDataset(index.split("train"), index.classes, crop=crop)
    pos = [i for i in range(len(strict)) if strict.record(i).name == bad_name]
    with pytest.raises(ImageDecodeError, match=bad_name):
        strict[pos[0]]
    with pytest.raises(ValueError, match=rf"1 images cannot be decoded: .*{bad_name}.*skip_bad_images=True"):
        strict.scan_images()

    ds = FineGrainedDataset(index.split("train"), index.classes, crop=crop, skip_bad_images=True)
    before = len(ds)
    assert ds.scan_images() == [str(root / "Images" / bad_name)]
    assert ds.stats["corrupt_images"] == ds.stats["bad_images_skipped"] == 1
    assert len(ds) == before - len(pos) and bad_name not in {ds.record(i).name for i in range(len(ds))}
    assert len(ds.targets) == len(ds) and all(int(ds[i]["target"]) == ds.targets[i] for i in range(len(ds)))


def test_box_samples_collate(dogs_master):
    index = open_finegrained(dogs_master.root)
    ds = FineGrainedDataset(index.split("train"), index.classes, build_image_transform(16), crop="box")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["target"].dtype == torch.int64
    assert batch["box"].shape == (4, 4) and batch["index"].tolist() == [0, 1, 2, 3]


# ---- stratified validation -----------------------------------------------------------------------------


def _records(counts: list[int]) -> list[ImageRecord]:
    out = []
    for label, n in enumerate(counts):
        out += [ImageRecord(f"/x/{label}_{i}.jpg", f"{label}_{i}.jpg", label) for i in range(n)]
    # interleave the classes so "input order" is not class order
    return sorted(out, key=lambda r: (int(r.name.split("_")[1][:-4]), r.label))


def test_stratified_holdout_per_class():
    recs = _records([1, 2, 10, 20, 100])
    train, val = stratified_holdout(recs, 0.1, seed=0)
    assert Counter(r.label for r in val) == {1: 1, 2: 1, 3: 2, 4: 10}  # at least one, never a class's last
    assert Counter(r.label for r in train) == {0: 1, 1: 1, 2: 9, 3: 18, 4: 90}
    assert not {r.name for r in train} & {r.name for r in val}
    assert [r for r in recs if r in set(train)] == train and [r for r in recs if r in set(val)] == val
    assert stratified_holdout(recs, 0.1, seed=0) == (train, val)
    assert stratified_holdout(recs, 0.1, seed=1)[1] != val
    # a class's choice does not depend on the other classes
    only_big = [r for r in recs if r.label == 4]
    assert [r for r in val if r.label == 4] == stratified_holdout(only_big, 0.1, seed=0)[1]


def test_stratified_holdout_errors():
    with pytest.raises(ValueError, match="val_fraction must be in"):
        stratified_holdout(_records([5]), 0.0)
    with pytest.raises(ValueError, match="none of the 3 classes has two images"):
        stratified_holdout(_records([1, 1, 1]), 0.1)


# ---- class folders and CSVs ----------------------------------------------------------------------------


def _folder_set(root: Path, classes: dict[str, int]) -> None:
    for k, (cls, n) in enumerate(classes.items()):
        for i in range(n):
            sub = root / cls / ("nested" if i == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 8), (10 * k, 0, 0)).save(sub / f"{i}.jpg")


def test_class_folders(tmp_path):
    _folder_set(tmp_path / "cub", {"002.Laysan_Albatross": 3, "001.Black_footed_Albatross": 2})
    (tmp_path / "cub" / "empty").mkdir()
    (tmp_path / "cub" / "README.txt").write_text("not a class")
    index = open_finegrained(tmp_path / "cub")
    assert index.format == "folders"
    assert list(index.classes.keys) == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert index.classes.names[0] == "001.Black footed Albatross" and index.classes.wnids == (None, None)
    assert sorted((r.name, r.label) for r in index.split("all")) == [
        ("001.Black_footed_Albatross/1.jpg", 0), ("001.Black_footed_Albatross/nested/0.jpg", 0),
        ("002.Laysan_Albatross/1.jpg", 1), ("002.Laysan_Albatross/2.jpg", 1),
        ("002.Laysan_Albatross/nested/0.jpg", 1)]
    assert set(standard_splits(index)) == {"train", "val"}
    ds = FineGrainedDataset(index.split("all"), index.classes)
    assert ds[0]["image"].shape == (3, 8, 10)

    # a separate test root: same classes, same indices, by folder name; a stranger is named
    _folder_set(tmp_path / "test", {"002.Laysan_Albatross": 1})
    test = open_finegrained(tmp_path / "test", classes=index.classes)
    assert [r.label for r in test.split("all")] == [1] and test.classes == index.classes
    _folder_set(tmp_path / "test", {"003.Sooty_Albatross": 1})
    with pytest.raises(ValueError, match="unknown class '003.Sooty_Albatross'"):
        open_finegrained(tmp_path / "test", classes=index.classes)


def test_loose_images_are_not_class_folders(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"not a fine-grained data set.*Stanford Dogs.*class folders.*CSV"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="images lie directly in it .*'a.jpg'"):
        read_class_folders(tmp_path)


def _csv_images(root: Path, names: list[str]) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6)).save(root / n)


@pytest.mark.parametrize("header", ["path,label\n", "image,class\n", ""])
def test_csv_with_names_and_header_detection(tmp_path, header):
    _csv_images(tmp_path / "imgs", ["a/1.jpg", "a/2.jpg", "b/3.jpg"])
    (tmp_path / "imgs" / "labels.csv").write_text(header + "a/1.jpg,pug\na/2.jpg,Chihuahua\nb/3.jpg,pug\n")
    index = open_finegrained(tmp_path / "imgs" / "labels.csv")  # paths relative to the CSV's folder
    assert index.format == "csv" and list(index.classes.keys) == ["Chihuahua", "pug"]
    assert [(r.name, r.label) for r in index.split("all")] == [("a/1.jpg", 1), ("a/2.jpg", 0), ("b/3.jpg", 1)]
    assert all(Path(r.path).is_file() for r in index.split("all"))


def test_csv_relative_to_a_given_root_and_index_labels(tmp_path):
    _csv_images(tmp_path / "imgs", ["1.jpg", "2.jpg"])
    (tmp_path / "labels.csv").write_text("file,label\n1.jpg,2\n2.jpg,0\n")
    index = open_finegrained(tmp_path / "imgs", ann=tmp_path / "labels.csv")
    assert index.classes.keys == ("0", "1", "2")
    assert [(Path(r.path), r.label) for r in index.split("all")] == [(tmp_path / "imgs" / "1.jpg", 2),
                                                                    (tmp_path / "imgs" / "2.jpg", 0)]
    assert len(FineGrainedDataset(index.split("all"), index.classes)) == 2


def test_csv_val_split_uses_the_training_classes(tmp_path, dogs_master):
    train = open_finegrained(dogs_master.root)
    (tmp_path / "val.csv").write_text(
        f"{dogs_master.root}/Images/{dogs_master.test[0][0]},Shih-Tzu\n"
        f"{dogs_master.root}/Images/{dogs_master.test[1][0]},n02085782\n"
        f"{dogs_master.root}/Images/{dogs_master.test[2][0]},n02085620-Chihuahua\n")
    val = read_label_csv(tmp_path / "val.csv", classes=train.classes)
    assert [r.label for r in val.split("all")] == [2, 1, 0] and val.classes == train.classes
    (tmp_path / "val.csv").write_text("x.jpg,Chihuahua\ny.jpg,Beagle\n")
    with pytest.raises(ValueError, match=r"val.csv, line 2: unknown class 'Beagle'"):
        read_label_csv(tmp_path / "val.csv", classes=train.classes)
    (tmp_path / "val.csv").write_text("x.jpg,1\ny.jpg,3\n")
    with pytest.raises(ValueError, match=r"line 2: class index 3 out of range \(0..2\)"):
        read_label_csv(tmp_path / "val.csv", classes=train.classes)


@pytest.mark.parametrize("text, message", [
    ("", "no rows"),
    ("path,label\n", "no rows"),
    ("a.jpg\n", r"line 1: expected 'path,label'"),
    ("a.jpg,x\nb.jpg,\n", "line 2: empty label"),
    ("a.jpg,x\n,y\n", "line 2: empty path"),
    ("a.jpg,x\nb.jpg,y\na.jpg,x\n", r"line 3: 'a.jpg' is already listed on line 1"),
    ("a.jpg,1\nb.jpg,-1\n", "line 2: class index -1 out of range"),
])
def test_bad_csv_names_line(tmp_path, text, message):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_label_csv(tmp_path / "l.csv")


def test_csv_missing_image_is_named(tmp_path):
    (tmp_path / "l.csv").write_text("gone.jpg,a\n")
    index = read_label_csv(tmp_path / "l.csv")
    with pytest.raises(FileNotFoundError, match=r"gone.jpg \(listed in .*l.csv\)"):
        FineGrainedDataset(index.split("all"), index.classes)


def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found"):
        detect_format(tmp_path / "nothing")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file but not a .csv"):
        detect_format(tmp_path / "x.json")
    with pytest.raises(ValueError, match="expected a 'path,label' CSV"):
        detect_format(tmp_path, ann=tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="label file not found"):
        detect_format(tmp_path, ann=tmp_path / "none.csv")
    (tmp_path / "labels.csv").write_text("a.jpg,b\n")
    with pytest.raises(ValueError, match="to use 'labels.csv', pass it as the root or as the label file"):
        detect_format(tmp_path)
    (tmp_path / "Images").mkdir()
    (tmp_path / "Annotation").mkdir()
    assert detect_format(tmp_path) == "stanford_dogs"
    with pytest.raises(ValueError, match="no breed folders"):
        open_finegrained(tmp_path)


def test_csv_first_row_naming_an_existing_file_is_data(tmp_path):
    Image.new("RGB", (6, 6)).save(tmp_path / "photo0001", format="JPEG")  # no extension, as some sets name them
    Image.new("RGB", (6, 6)).save(tmp_path / "photo0002", format="JPEG")
    (tmp_path / "l.csv").write_text("photo0001,pug\nphoto0002,pug\n")
    assert [r.name for r in read_label_csv(tmp_path / "l.csv").split("all")] == ["photo0001", "photo0002"]
