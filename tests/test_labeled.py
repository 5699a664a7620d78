"""Labeled datasets in their official layouts, built in miniature (odd-sized 37x29 images) in tmp_path."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdm.common.errors import DataError
from mdm.common.labels import IGNORE_INDEX
from mdm.segment.datasets import LabeledImage, load_split
from mdm.segment.splits import label_subset

W, H = 37, 29  # PIL sizes are (width, height); arrays are [H, W]


def _rgb(seed: int, w: int = W, h: int = H) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _instance_map(values=(5, 9), w: int = W, h: int = H) -> np.ndarray:
    """Two separate rectangles with the given grey values on a 0 background."""
    m = np.zeros((h, w), np.uint8)
    m[2:10, 3:12] = values[0]
    m[15:25, 20:33] = values[1]
    return m


# ---- GlaS -------------------------------------------------------------------------------------------------------

GRADE_CSV = (
    "name,Patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n"
    "testA_1,4,benign,adenomatous\ntestA_2,4,malignant,moderately differentiated\n"
    "testB_1,8,malignant,poorly differentiated\ntrain_1,1,malignant,moderately differentiated\n"
)


def make_glas_release(root: Path, train=(1, 2, 10), test_a=(1, 2), test_b=(1,)) -> Path:
    """Warwick-QU as released: one folder of <name>.bmp + <name>_anno.bmp, plus Grade.csv."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Grade.csv").write_text(GRADE_CSV)
    k = 0
    for prefix, ids in (("train", train), ("testA", test_a), ("testB", test_b)):
        for i in ids:
            k += 1
            _rgb(k).save(root / f"{prefix}_{i}.bmp")
            Image.fromarray(_instance_map((k, k + 40))).save(root / f"{prefix}_{i}_anno.bmp")
    return root


def make_glas_flat(root: Path) -> Path:
    """The flat alternative: {train,test}/img/<stem>.png + {train,test}/labelcol/<stem>_anno.png (binary 0/255)."""
    for split, stems in (("train", ("train_1", "train_2")), ("test", ("testA_1", "testB_3"))):
        (root / split / "img").mkdir(parents=True)
        (root / split / "labelcol").mkdir(parents=True)
        for j, stem in enumerate(stems):
            _rgb(j).save(root / split / "img" / f"{stem}.png")
            Image.fromarray(_instance_map((255, 255))).save(root / split / "labelcol" / f"{stem}_anno.png")
    return root


def test_glas_release_layout(tmp_path):
    root = make_glas_release(tmp_path / "Warwick QU Dataset (Released 2016_07_08)")
    train = load_split("glas", str(root), "train")
    assert train.names == ["train_1", "train_2", "train_10"]  # numeric, not lexicographic
    assert train.num_classes == 2 and train.class_names == ["background", "gland"]
    item = train[2]
    assert isinstance(item, LabeledImage) and item.name == "train_10" and item.group == ""
    assert item.image.shape == (3, H, W) and item.image.dtype == torch.float32
    assert -1 <= item.image.min() and item.image.max() <= 1
    assert item.label.shape == (H, W) and item.label.dtype == torch.int64
    assert set(item.label.unique().tolist()) == {0, 1}
    assert item.instances.dtype == torch.int64 and item.instances.unique().tolist() == [0, 1, 2]  # relabelled
    assert torch.equal(item.label, (item.instances > 0).long())
    assert (item.instances == 1).sum() == 8 * 9 and (item.instances == 2).sum() == 10 * 13

    test = load_split("glas", str(root), "test")
    assert test.names == ["testA_1", "testA_2", "testB_1"]
    assert [test[i].group for i in range(len(test))] == ["testA", "testA", "testB"]
    assert test.groups == ["testA", "testA", "testB"]


def test_glas_release_found_below_root(tmp_path):
    make_glas_release(tmp_path / "Warwick QU Dataset (Released 2016_07_08)")
    assert len(load_split("glas", str(tmp_path), "train")) == 3


def test_glas_flat_layout(tmp_path):
    root = make_glas_flat(tmp_path / "GlaS")
    train = load_split("glas", str(root), "train")
    assert train.names == ["train_1", "train_2"]
    item = train[0]
    assert item.label.unique().tolist() == [0, 1]
    assert item.instances.max() == 2  # binary mask: two connected components
    test = load_split("glas", str(root), "test")
    assert [test[i].group for i in range(2)] == ["testA", "testB"]


# ---- MoNuSeg ----------------------------------------------------------------------------------------------------

REGION_ATTRS = ('Type="0" Zoom="0.5" Selected="0" ImageLocation="" ImageFocus="-1" Length="40.1" Area="120.5" '
                'LengthMicrons="10.1" AreaMicrons="7.6" Text="" NegativeROA="0" InputRegionId="0" Analyze="1"')


def monuseg_xml(polygons) -> str:
    regions = []
    for k, poly in enumerate(polygons, start=1):
        vertices = "\n".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        regions.append(f'<Region Id="{k}" {REGION_ATTRS} DisplayId="{k}">\n<Attributes/>\n<Vertices>\n{vertices}\n'
                       f"</Vertices>\n</Region>")
    return (
        '<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.252100">\n'
        '<Annotation Id="1" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" Incremental="0" Type="4" '
        'LineColor="65280" Visible="1" Selected="1" MarkupImagePath="" MacroName="">\n'
        '<Attributes>\n<Attribute Name="Description" Id="0" Value=""/>\n</Attributes>\n<Regions>\n'
        '<RegionAttributeHeaders>\n<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n'
        '<AttributeHeader Id="9997" Name="Length" ColumnWidth="-1"/>\n'
        '<AttributeHeader Id="9996" Name="Area" ColumnWidth="-1"/>\n'
        '<AttributeHeader Id="9998" Name="Text" ColumnWidth="-1"/>\n'
        '<AttributeHeader Id="1" Name="Description" ColumnWidth="-1"/>\n</RegionAttributeHeaders>\n'
        + "\n".join(regions) + "\n</Regions>\n<Plots/>\n</Annotation>\n</Annotations>\n"
    )


def _circle(cx, cy, r, n=24):
    return [(round(cx + r * math.cos(2 * math.pi * t / n), 2), round(cy + r * math.sin(2 * math.pi * t / n), 2))
            for t in range(n)]


POLYGONS = [
    [(10.5, 3.25), (20.5, 3.25), (20.5, 12.75), (10.5, 12.75)],  # a 10 x 9.5 box
    _circle(26.0, 20.0, 6.0),
]


def _shoelace(poly):
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]))) / 2


def make_monuseg_release(root: Path) -> Path:
    train = root / "MoNuSeg 2018 Training Data"
    (train / "Tissue Images").mkdir(parents=True)
    (train / "Annotations").mkdir(parents=True)
    for k, stem in enumerate(["TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1"]):
        _rgb(k).save(train / "Tissue Images" / f"{stem}.tif")
        (train / "Annotations" / f"{stem}.xml").write_text(monuseg_xml(POLYGONS))
    test = root / "MoNuSegTestData"
    test.mkdir()
    _rgb(7).save(test / "TCGA-2Z-A9J9-01A-01-TS1.tif")
    (test / "TCGA-2Z-A9J9-01A-01-TS1.xml").write_text(monuseg_xml(POLYGONS[:1]))
    return root


def test_monuseg_release_layout(tmp_path):
    root = make_monuseg_release(tmp_path / "MoNuSeg")
    train = load_split("monuseg", str(root), "train")
    assert len(train) == 2 and train.class_names == ["background", "nucleus"]
    item = train[0]
    assert item.name == "TCGA-18-5592-01Z-00-DX1" and item.image.shape == (3, H, W)
    assert item.instances.unique().tolist() == [0, 1, 2]
    assert torch.equal(item.label, (item.instances > 0).long())
    for k, poly in enumerate(POLYGONS, start=1):
        area = _shoelace(poly)
        pixels = int((item.instances == k).sum())
        assert 0.8 * area <= pixels <= 1.35 * area, (k, pixels, area)
    # polygon 1 spans x 10.5..20.5 (columns), y 3.25..12.75 (rows), give or take a pixel of rasterisation
    ys, xs = torch.nonzero(item.instances == 1, as_tuple=True)
    box = torch.stack([xs.min(), xs.max(), ys.min(), ys.max()]).float()
    assert (box - torch.tensor([10.5, 20.5, 3.25, 12.75])).abs().max() <= 1, box

    test = load_split("monuseg", str(root), "test")
    assert test.names == ["TCGA-2Z-A9J9-01A-01-TS1"] and test[0].instances.max() == 1


def test_monuseg_plain_split_folders(tmp_path):
    (tmp_path / "test").mkdir()
    _rgb(1).save(tmp_path / "test" / "a.tif")
    (tmp_path / "test" / "a.xml").write_text(monuseg_xml(POLYGONS))
    assert load_split("monuseg", str(tmp_path), "test")[0].instances.max() == 2


def test_monuseg_flat_layout_connected_components(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "img").mkdir(parents=True)
        (tmp_path / split / "labelcol").mkdir(parents=True)
        _rgb(0).save(tmp_path / split / "img" / "TCGA-A7-A13E-01Z-00-DX1.png")
        Image.fromarray(_instance_map((1, 1))).save(tmp_path / split / "labelcol" / "TCGA-A7-A13E-01Z-00-DX1.png")
    item = load_split("monuseg", str(tmp_path), "train")[0]
    assert item.instances.max() == 2 and item.label.sum() == 8 * 9 + 10 * 13


# ---- FFHQ-34 (DDPM-segmentation layout) -------------------------------------------------------------------------


def make_ffhq34(root: Path, n_train=3, n_test=2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / "real" / split
        folder.mkdir(parents=True)
        for i in [0, 1, 10, 2, 3][:n]:
            _rgb(i).save(folder / f"image_{i}.png")
            label = np.random.default_rng(i).integers(0, 34, (H, W))
            np.save(folder / f"image_{i}.npy", label)
    return root


def test_ffhq34_layout(tmp_path):
    root = make_ffhq34(tmp_path / "ffhq_34")
    train = load_split("ffhq34", str(root), "train")
    assert train.names == ["image_0", "image_1", "image_10"]
    assert train.num_classes == 34 and train.class_names[:2] == ["class_0", "class_1"] and len(train.class_names) == 34
    item = train[2]
    assert item.instances is None and item.label.dtype == torch.int64 and item.label.shape == (H, W)
    assert torch.equal(item.label, torch.from_numpy(np.load(root / "real" / "train" / "image_10.npy")))
    assert len(load_split("ffhq34", str(root), "test")) == 2
    assert load_split("ffhq34", str(root), "train", num_classes=40).num_classes == 40  # given, never inferred
    assert load_split("celeba19", str(root), "test").num_classes == 19  # same layout, 19 classes by default
    named = load_split("ffhq34", str(root), "test", class_names=[f"part{k}" for k in range(34)])
    assert named.class_names[5] == "part5"
    with pytest.raises(DataError, match="num_classes"):
        load_split("glas", str(root), "train", num_classes=34)  # the instance sources have 2 classes


# ---- generic ----------------------------------------------------------------------------------------------------


def make_generic(root: Path, classes_txt=True) -> Path:
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for stem in ("b", "a"):
            _rgb(ord(stem)).save(root / split / "images" / f"{stem}.jpg")
            m = np.zeros((H, W), np.uint8)
            m[:10] = 1
            m[10:20] = 2
            m[-2:] = IGNORE_INDEX
            Image.fromarray(m).save(root / split / "masks" / f"{stem}.png")
    if classes_txt:
        (root / "classes.txt").write_text("background\nroad\nbuilding\n")
    return root


def test_generic_layout(tmp_path):
    root = make_generic(tmp_path / "g")
    train = load_split("generic", str(root), "train")
    assert train.names == ["a", "b"] and train.num_classes == 3
    assert train.class_names == ["background", "road", "building"]
    item = train[0]
    assert item.instances is None and item.label.unique().tolist() == [0, 1, 2, IGNORE_INDEX]
    sub = train.subset([1])
    assert sub.names == ["b"] and sub.num_classes == 3 and sub[0].name == "b"

    bare = make_generic(tmp_path / "bare", classes_txt=False)
    with pytest.raises(DataError, match="num_classes"):
        load_split("generic", str(bare), "train")
    ds = load_split("generic", str(bare), "test", num_classes=3)
    assert ds.class_names == ["class_0", "class_1", "class_2"] and len(ds) == 2


# ---- synthetic --------------------------------------------------------------------------------------------------


def test_synthetic_source():
    train = load_split("synthetic", None, "train", synthetic_seed=0, synthetic_size=32)
    test = load_split("synthetic", None, "test", synthetic_seed=0, synthetic_size=32)
    assert len(train) == 20 and len(test) == 20 and not set(train.names) & set(test.names)
    assert train.names[0] == "s00_i000" and test.names[0].startswith("s04_")
    item = train[3]
    assert item.name == "s00_i003" and item.image.shape == (3, 32, 32)
    assert torch.equal(item.label, (item.instances > 0).long()) and train.class_names == ["background", "gland"]


# ---- bad inputs -------------------------------------------------------------------------------------------------


def test_missing_root_and_no_images(tmp_path):
    for source in ("glas", "monuseg", "ffhq34", "generic"):
        with pytest.raises(DataError, match="nowhere"):
            load_split(source, str(tmp_path / "nowhere"), "train", num_classes=2)
        with pytest.raises(DataError):
            load_split(source, None, "train")
    (tmp_path / "real" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_split("ffhq34", str(tmp_path), "train")
    with pytest.raises(DataError, match="unknown"):
        load_split("glas", str(tmp_path), "val")


def test_image_without_mask(tmp_path):
    glas = make_glas_release(tmp_path / "glas")
    _rgb(3).save(glas / "train_4.bmp")
    with pytest.raises(DataError, match="train_4.bmp"):
        load_split("glas", str(glas), "train")

    mon = make_monuseg_release(tmp_path / "mon")
    _rgb(3).save(mon / "MoNuSegTestData" / "TCGA-XX.tif")
    with pytest.raises(DataError, match="TCGA-XX.tif"):
        load_split("monuseg", str(mon), "test")

    ffhq = make_ffhq34(tmp_path / "ffhq")
    (ffhq / "real" / "test" / "image_1.npy").unlink()
    with pytest.raises(DataError, match="image_1.png"):
        load_split("ffhq34", str(ffhq), "test")

    gen = make_generic(tmp_path / "gen")
    (gen / "train" / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match="a.jpg"):
        load_split("generic", str(gen), "train")


def test_size_mismatch(tmp_path):
    glas = make_glas_release(tmp_path / "glas", train=(1,))
    Image.fromarray(_instance_map(w=W + 1)).save(glas / "train_1_anno.bmp")
    with pytest.raises(DataError, match="train_1_anno.bmp"):
        load_split("glas", str(glas), "train")[0]

    ffhq = make_ffhq34(tmp_path / "ffhq")
    np.save(ffhq / "real" / "train" / "image_1.npy", np.zeros((W, H), np.int64))
    ds = load_split("ffhq34", str(ffhq), "train")
    ds[0]  # the others still load
    with pytest.raises(DataError, match="image_1.npy"):
        ds[1]

    gen = make_generic(tmp_path / "gen")
    Image.fromarray(np.zeros((H - 1, W), np.uint8)).save(gen / "test" / "masks" / "b.png")
    with pytest.raises(DataError, match="b.png"):
        load_split("generic", str(gen), "test")[1]


def test_class_id_out_of_range(tmp_path):
    gen = make_generic(tmp_path / "gen")
    m = np.zeros((H, W), np.uint8)
    m[5, 5] = 7
    Image.fromarray(m).save(gen / "train" / "masks" / "b.png")
    ds = load_split("generic", str(gen), "train")
    ds[0]
    with pytest.raises(DataError, match=r"b\.png.*7"):
        ds[1]

    ffhq = make_ffhq34(tmp_path / "ffhq")
    np.save(ffhq / "real" / "test" / "image_0.npy", np.full((H, W), 34, np.int64))
    with pytest.raises(DataError, match="image_0.npy"):
        load_split("ffhq34", str(ffhq), "test")[0]
    # 255 is ignore, not out of range
    np.save(ffhq / "real" / "test" / "image_0.npy", np.full((H, W), IGNORE_INDEX, np.int64))
    assert load_split("ffhq34", str(ffhq), "test")[0].label.unique().tolist() == [IGNORE_INDEX]


def test_rgb_mask_rejected_in_generic(tmp_path):
    gen = make_generic(tmp_path / "gen")
    _rgb(0).save(gen / "train" / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a\.png.*single-channel"):
        load_split("generic", str(gen), "train")[0]


def test_bad_monuseg_xml(tmp_path):
    mon = make_monuseg_release(tmp_path / "mon")
    (mon / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.xml").write_text("<Annotations><Annotation>")
    with pytest.raises(DataError, match="TCGA-2Z-A9J9-01A-01-TS1.xml"):
        load_split("monuseg", str(mon), "test")[0]


# ---- label subsets ----------------------------------------------------------------------------------------------


def test_label_subset():
    small = label_subset(85, 0.1, seed=0)
    assert len(small) == 8 and small == sorted(small) and len(set(small)) == 8
    half, full = label_subset(85, 0.5, seed=0), label_subset(85, 1.0, seed=0)
    assert len(half) == 42 and full == list(range(85))
    assert set(small) <= set(half) <= set(full)  # nested for one seed
    assert label_subset(85, 0.1, seed=0) == small  # deterministic
    assert label_subset(85, 0.1, seed=1) != small
    assert label_subset(85, 0.001, seed=0).__len__() == 1
    assert len(label_subset(100, 0.29, seed=0)) == 29
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError):
            label_subset(85, bad, seed=0)
