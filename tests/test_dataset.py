"""Tests for training/dataset.py: folder and ZIP sources, index mapping, labels, pickling and bad input."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from training import dataset as dataset_module
from training.dataset import Dataset, DatasetError, ImageFolderDataset

# ----------------------------------------------------------------------------
# Builders for small on-the-fly datasets.


def make_pixels(seed, size=8, channels=3):
    """Random uint8 HWC pixels (HW for one channel), unique per seed."""
    rng = np.random.RandomState(seed)
    shape = [size, size] if channels == 1 else [size, size, channels]
    return rng.randint(0, 256, size=shape, dtype=np.uint8)


def encode(pixels, fmt="PNG"):
    """Encode pixels with Pillow; returns the file bytes."""
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def to_chw(pixels):
    return pixels[:, :, np.newaxis].transpose(2, 0, 1) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def write_folder(root, files):
    """files: {relative_name: bytes}. Creates subfolders as needed."""
    for name, data in files.items():
        full = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return str(root)


def write_zip(path, files, dirs=()):
    """Uncompressed ZIP with the given members (and explicit directory entries)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for d in dirs:
            zf.writestr(d.rstrip("/") + "/", b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return str(path)


def image_files(names, size=8, channels=3, fmt="PNG"):
    """Distinct images named `names`; returns ({name: bytes}, {name: HWC pixels})."""
    pixels = {name: make_pixels(i, size, channels) for i, name in enumerate(names)}
    return {name: encode(px, fmt) for name, px in pixels.items()}, pixels


def labels_json(pairs):
    return json.dumps({"labels": pairs}).encode()


def make_source(kind, tmp_path, files, dirs=()):
    if kind == "zip":
        return write_zip(tmp_path / "data.zip", files, dirs)
    return write_folder(tmp_path / "data", files)


def expected_subset(num_raw, max_size, seed):
    """The documented max_size rule: shuffle arange(R) with RandomState(seed), keep max_size, sort."""
    idx = np.arange(num_raw, dtype=np.int64)
    if max_size is not None and num_raw > max_size:
        np.random.RandomState(seed).shuffle(idx)
        idx = np.sort(idx[:max_size])
    return idx


# ----------------------------------------------------------------------------
# Sources, shapes and pixel round-trips.


@pytest.mark.parametrize("kind", ["dir", "zip"])
@pytest.mark.parametrize("channels", [3, 1, 4])
def test_round_trip_pixels(tmp_path, kind, channels):
    names = ["img0.png", "img1.png", "sub/deeper/img2.png", "sub/img3.png"]
    files, pixels = image_files(names, size=16, channels=channels)
    files["notes.txt"] = b"not an image"
    path = make_source(kind, tmp_path, files, dirs=["sub/", "sub/deeper/"])
    ds = ImageFolderDataset(path)

    assert ds.name == "data"
    assert len(ds) == 4
    assert ds.image_shape == [channels, 16, 16]
    assert ds.num_channels == channels and ds.resolution == 16
    ordered = sorted(names)
    for i, name in enumerate(ordered):
        image, label = ds[i]
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert image.flags.c_contiguous
        np.testing.assert_array_equal(image, to_chw(pixels[name]))
        assert label.dtype == np.float32 and label.shape == (0,)
    assert ds.label_shape == [0] and ds.label_dim == 0
    assert not ds.has_labels and not ds.has_onehot_labels
    ds.close()


def test_sort_order_extensions_and_ignored_files(tmp_path):
    # Plain string order: upper case first, nested names by full relative path; BMP and upper-case
    # extensions count as images, dataset.json and other files do not.
    names = ["b.png", "B.png", "a.bmp", "sub/c.PNG", "d.tif"]
    files = {}
    pixels = {}
    for i, name in enumerate(names):
        px = make_pixels(i)
        pixels[name] = px
        fmt = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF"}[os.path.splitext(name)[1].lower()]
        files[name] = encode(px, fmt)
    files["dataset.json"] = labels_json(None)
    files["readme.md"] = b"hello"
    ds = ImageFolderDataset(write_folder(tmp_path / "set", files))
    expected_order = ["B.png", "a.bmp", "b.png", "d.tif", os.path.join("sub", "c.PNG")]
    assert len(ds) == len(expected_order)
    for i, name in enumerate(expected_order):
        np.testing.assert_array_equal(ds[i][0], to_chw(pixels[name.replace(os.sep, "/")]))


@pytest.mark.parametrize("use_pyspng", [True, False])
def test_png_decoders_agree(tmp_path, monkeypatch, use_pyspng):
    if not use_pyspng:
        monkeypatch.setattr(dataset_module, "pyspng", None)
    elif dataset_module.pyspng is None:
        pytest.skip("pyspng not installed")
    files, pixels = image_files(["x.png", "y.png"], channels=3)
    gray_files, gray_pixels = image_files(["g.png"], channels=1)
    ds = ImageFolderDataset(write_zip(tmp_path / "rgb.zip", files))
    for i, name in enumerate(["x.png", "y.png"]):
        np.testing.assert_array_equal(ds[i][0], to_chw(pixels[name]))
    ds_gray = ImageFolderDataset(write_zip(tmp_path / "gray.zip", gray_files))
    assert ds_gray.image_shape == [1, 8, 8]
    np.testing.assert_array_equal(ds_gray[0][0], to_chw(gray_pixels["g.png"]))


def test_gray_alpha_png_decodes_where_pyspng_refuses(tmp_path):
    """pyspng cannot decode gray+alpha PNGs; Pillow then decodes them, so the problem reported is the channel
    count (train.py: 1 or 3 needed), not a corrupt file."""
    pixels = np.random.RandomState(5).randint(0, 256, size=[8, 8, 2]).astype(np.uint8)
    ds = ImageFolderDataset(
        write_zip(tmp_path / "la.zip", {"a.png": encode_image(PIL.Image.fromarray(pixels, "LA"), "PNG")})
    )
    assert ds.image_shape == [2, 8, 8]
    np.testing.assert_array_equal(ds[0][0], to_chw(pixels))


def palette_image(seed, size=8, colours=16):
    """A Pillow 'P' image with `colours` random palette entries; its indices (< colours) are not its colours."""
    rng = np.random.RandomState(seed)
    image = PIL.Image.fromarray(rng.randint(0, colours, size=[size, size]).astype(np.uint8), mode="P")
    image.putpalette(rng.randint(0, 256, size=colours * 3).astype(np.uint8).tolist())
    return image


def encode_image(image, fmt, **save_kwargs):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("use_pyspng", [True, False])
@pytest.mark.parametrize("fmt", ["GIF", "BMP", "PNG"])
def test_palette_images_give_rgb_colours(tmp_path, monkeypatch, fmt, use_pyspng):
    """Palette files decode to their RGB colours with either decoder (Pillow once gave the raw indices)."""
    if not use_pyspng:
        monkeypatch.setattr(dataset_module, "pyspng", None)
    elif dataset_module.pyspng is None:
        pytest.skip("pyspng not installed")
    ext = "." + fmt.lower()
    images = [palette_image(1), palette_image(2)]
    # A transparent palette entry is dropped, as convert('RGB') and pyspng both do.
    files = {"a" + ext: encode_image(images[0], fmt), "b" + ext: encode_image(images[1], fmt, transparency=3)}
    ds = ImageFolderDataset(write_zip(tmp_path / "pal.zip", files))
    assert ds.image_shape == [3, 8, 8]
    for i, image in enumerate(images):
        expected = np.array(image.convert("RGB"))
        assert expected.max() > 15  # the colours, not the 16 palette indices
        np.testing.assert_array_equal(ds[i][0], to_chw(expected))


def test_palette_with_alpha_gives_rgb(tmp_path, monkeypatch):
    """'PA' images (which Pillow cannot save to a file to test with) are converted like 'P' ones."""
    image = palette_image(9).convert("PA")
    expected = np.array(image.convert("RGB"))
    monkeypatch.setattr(PIL.Image, "open", lambda _source: image)
    ds = ImageFolderDataset(write_zip(tmp_path / "pa.zip", {"x.gif": b"decoded by the patched opener"}))
    assert ds.image_shape == [3, 8, 8]
    np.testing.assert_array_equal(ds[0][0], to_chw(expected))


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_pillow_path_keeps_other_modes_as_stored(tmp_path, monkeypatch, mode, channels, fmt):
    monkeypatch.setattr(dataset_module, "pyspng", None)
    if fmt == "BMP" and mode == "RGBA":
        pytest.skip("Pillow writes RGBA as an RGB BMP")
    pixels = make_pixels(7, channels=channels)
    data = encode(pixels, fmt)
    ds = ImageFolderDataset(write_zip(tmp_path / "x.zip", {"x." + fmt.lower(): data}))
    with PIL.Image.open(io.BytesIO(data)) as image:
        assert image.mode == mode
        np.testing.assert_array_equal(ds[0][0], to_chw(np.array(image)))
    np.testing.assert_array_equal(ds[0][0], to_chw(pixels))


def test_name_and_resolution_argument(tmp_path):
    files, _ = image_files(["a.png"], size=16)
    path = write_zip(tmp_path / "my.set.ZIP", files)
    ds = ImageFolderDataset(path, resolution=16)
    assert ds.name == "my.set" and ds.resolution == 16
    folder = write_folder(tmp_path / "plain", files)
    assert ImageFolderDataset(folder + os.sep).name == ""


# ----------------------------------------------------------------------------
# Index mapping: x-flip and max_size.


def test_xflip_doubles_with_mirrored_second_half(tmp_path):
    names = [f"img{i}.png" for i in range(3)]
    files, pixels = image_files(names)
    ds = ImageFolderDataset(write_zip(tmp_path / "d.zip", files), xflip=True)
    assert len(ds) == 6
    for i in range(6):
        image, _ = ds[i]
        original = to_chw(pixels[names[i % 3]])
        expected = original[:, :, ::-1] if i >= 3 else original
        np.testing.assert_array_equal(image, expected)
        assert image.flags.c_contiguous
        details = ds.get_details(i)
        assert details.raw_idx == i % 3 and type(details.raw_idx) is int
        assert details.xflip is (i >= 3)


@pytest.mark.parametrize("max_size, seed, xflip", [(4, 0, False), (3, 123, True), (7, 5, False), (10, 1, True)])
def test_max_size_selection(tmp_path, max_size, seed, xflip):
    num_raw = 7
    names = [f"img{i:02d}.png" for i in range(num_raw)]
    files, pixels = image_files(names)
    ds = ImageFolderDataset(write_folder(tmp_path / "d", files), max_size=max_size, random_seed=seed, xflip=xflip)
    subset = expected_subset(num_raw, max_size, seed)
    raw = np.concatenate([subset, subset]) if xflip else subset
    assert len(ds) == len(raw)
    assert [ds.get_details(i).raw_idx for i in range(len(ds))] == raw.tolist()
    for i, r in enumerate(raw):
        expected = to_chw(pixels[names[r]])
        if xflip and i >= len(subset):
            expected = expected[:, :, ::-1]
        np.testing.assert_array_equal(ds[i][0], expected)


def test_max_size_uses_a_private_generator():
    # The subset must not depend on (or disturb) numpy's global generator.
    np.random.seed(99)
    state = np.random.get_state()[1].copy()
    ds = Dataset(name="mem", raw_shape=[20, 3, 4, 4], max_size=5, random_seed=7)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert [ds.get_details(i).raw_idx for i in range(5)] == expected_subset(20, 5, 7).tolist()
    assert ds._raw_idx.dtype == np.int64
    # Known value of the documented rule: RandomState(0) shuffles arange(10) to [2, 8, 4, 9, 1, 6, 7, 3, 0, 5].
    ds10 = Dataset(name="mem", raw_shape=[10, 3, 4, 4], max_size=3)
    assert [ds10.get_details(i).raw_idx for i in range(3)] == [2, 4, 8]
    with pytest.raises(DatasetError, match=r"max_size must be None or >= 0, found -1"):
        Dataset(name="mem", raw_shape=[3, 3, 4, 4], max_size=-1)


# ----------------------------------------------------------------------------
# Labels.


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_integer_labels_are_one_hot(tmp_path, kind):
    names = ["a.png", "sub/b.png", "sub/c.png", "d.png"]
    classes = {"a.png": 1, "sub/b.png": 0, "sub/c.png": 4, "d.png": 1}
    files, _ = image_files(names)
    files["dataset.json"] = labels_json([[n, c] for n, c in classes.items()])
    path = make_source(kind, tmp_path, files)

    # Subset that excludes the image of class 4: label_shape still counts all raw labels.
    class4_idx = sorted(names).index("sub/c.png")
    seed = next(s for s in range(100) if class4_idx not in expected_subset(4, 2, s))
    ds = ImageFolderDataset(path, use_labels=True, max_size=2, random_seed=seed)
    assert ds.has_labels and ds.has_onehot_labels
    assert ds.label_shape == [5] and ds.label_dim == 5
    ordered = sorted(names)
    for i in range(len(ds)):
        raw_idx = ds.get_details(i).raw_idx
        expected = np.zeros(5, np.float32)
        expected[classes[ordered[raw_idx]]] = 1
        label = ds.get_label(i)
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(ds[i][1], expected)
        raw_label = ds.get_details(i).raw_label
        assert isinstance(raw_label, np.int64) and raw_label == classes[ordered[raw_idx]]


def test_float_vector_labels(tmp_path):
    names = ["a.png", "b.png", "c.png"]
    vectors = {"a.png": [0.5, -1.0, 2], "b.png": [0.25, 0.0, 1e-3], "c.png": [3, 4, 5]}
    files, _ = image_files(names)
    files["dataset.json"] = labels_json([[n, v] for n, v in vectors.items()])
    ds = ImageFolderDataset(write_zip(tmp_path / "v.zip", files), use_labels=True, xflip=True)
    assert ds.label_shape == [3] and ds.label_dim == 3
    assert ds.has_labels and not ds.has_onehot_labels
    for i in range(6):
        expected = np.array(vectors[names[i % 3]], dtype=np.float32)
        label = ds.get_label(i)
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, expected)
        raw_label = ds.get_details(i).raw_label
        assert raw_label.dtype == np.float32
        np.testing.assert_array_equal(raw_label, expected)
    # Returned labels are copies: mutating one does not alter the dataset.
    ds.get_label(0)[:] = 7
    np.testing.assert_array_equal(ds.get_label(0), vectors["a.png"])


def test_labels_absent_disabled_or_null(tmp_path):
    files, _ = image_files(["a.png", "b.png"])
    with_labels = dict(files, **{"dataset.json": labels_json([["a.png", 0], ["b.png", 2]])})
    disabled = ImageFolderDataset(write_folder(tmp_path / "l", with_labels), use_labels=False)
    assert disabled.label_shape == [0] and not disabled.has_labels
    assert disabled[0][1].shape == (0,)
    for tag, extra in [
        ("none", {}),
        ("null", {"dataset.json": b'{"labels": null}'}),
        ("nokey", {"dataset.json": b"{}"}),
    ]:
        ds = ImageFolderDataset(write_folder(tmp_path / tag, dict(files, **extra)), use_labels=True)
        assert ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels
        assert ds.get_label(1).shape == (0,) and ds.get_label(1).dtype == np.float32
    # A dataset.json in a subfolder is not the labels file.
    nested = dict(files, **{"sub/dataset.json": labels_json([["a.png", 0], ["b.png", 1]])})
    assert not ImageFolderDataset(write_folder(tmp_path / "n", nested), use_labels=True).has_labels


def test_duplicate_label_entries_last_wins(tmp_path):
    files, _ = image_files(["a.png", "b.png"])
    files["dataset.json"] = labels_json([["a.png", 0], ["b.png", 1], ["a.png", 2]])
    ds = ImageFolderDataset(write_folder(tmp_path / "d", files), use_labels=True)
    assert ds.get_details(0).raw_label == 2 and ds.label_shape == [3]


# ----------------------------------------------------------------------------
# Pickling and DataLoader workers.


def test_pickle_after_reading_from_zip(tmp_path):
    names = ["a.png", "b.png", "c.png"]
    files, pixels = image_files(names)
    files["dataset.json"] = labels_json([[n, i] for i, n in enumerate(names)])
    ds = ImageFolderDataset(write_zip(tmp_path / "p.zip", files), use_labels=True, xflip=True)
    first = ds[4]
    assert ds.label_shape == [3]
    assert ds._zipfile is not None

    state = ds.__getstate__()
    assert state["_zipfile"] is None and state["_raw_labels"] is None and state["_label_shape"] == [3]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._zipfile is None and clone._raw_labels is None
    assert len(clone) == 6 and clone.name == "p" and clone.label_shape == [3]
    image, label = clone[4]
    np.testing.assert_array_equal(image, first[0])
    np.testing.assert_array_equal(label, first[1])
    np.testing.assert_array_equal(image, to_chw(pixels["b.png"])[:, :, ::-1])
    # The original keeps working, and close() can be called repeatedly.
    ds.close()
    ds.close()
    np.testing.assert_array_equal(ds[0][0], to_chw(pixels["a.png"]))
    clone.close()


def test_dataloader_with_workers_over_zip(tmp_path):
    names = [f"d{i // 3}/img{i}.png" for i in range(9)]
    files, pixels = image_files(names)
    files["dataset.json"] = labels_json([[n, i % 4] for i, n in enumerate(names)])
    ds = ImageFolderDataset(write_zip(tmp_path / "w.zip", files), use_labels=True, xflip=True)
    ds[0]  # The parent's archive handle is open before the workers start.
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=2)
    images = torch.cat([batch[0] for batch in loader]).numpy()
    labels = torch.cat([batch[1] for batch in loader]).numpy()
    assert images.shape == (18, 3, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (18, 4) and labels.dtype == np.float32
    for i in range(18):
        expected = to_chw(pixels[sorted(names)[i % 9]])
        np.testing.assert_array_equal(images[i], expected[:, :, ::-1] if i >= 9 else expected)
        np.testing.assert_array_equal(labels[i], np.eye(4, dtype=np.float32)[names.index(sorted(names)[i % 9]) % 4])
    # Still usable in the parent afterwards.
    np.testing.assert_array_equal(ds[1][0], to_chw(pixels[sorted(names)[1]]))


def test_forked_process_reopens_archive(tmp_path):
    files, _ = image_files(["a.png"])
    ds = ImageFolderDataset(write_zip(tmp_path / "f.zip", files))
    parent_handle = ds._get_zipfile()
    assert ds._get_zipfile() is parent_handle  # Reused within one process.
    ds._zipfile_pid = -1  # As seen from a forked child: the handle belongs to another process.
    assert ds._get_zipfile() is not parent_handle
    parent_handle.close()


# ----------------------------------------------------------------------------
# Bad input: one clear DatasetError (an OSError and a ValueError) naming the file.


def test_error_type_and_message():
    err = DatasetError("Image 'x.png': expected 8x8")
    assert isinstance(err, OSError) and isinstance(err, ValueError)
    assert str(err) == "Image 'x.png': expected 8x8"


def test_bad_paths(tmp_path):
    with pytest.raises(DatasetError, match=r"^Path must point to a directory or zip: '.*missing' does not exist$"):
        ImageFolderDataset(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=r"Path must point to a directory or zip: '.*nope\.zip' does not exist"):
        ImageFolderDataset(str(tmp_path / "nope.zip"))
    text = tmp_path / "images.txt"
    text.write_text("hello")
    with pytest.raises(DatasetError, match=r"images\.txt' is a file with extension '\.txt', expected a directory"):
        ImageFolderDataset(str(text))
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DatasetError, match=r"'.*fake\.zip' is not a valid ZIP archive"):
        ImageFolderDataset(str(fake))


def test_empty_sources(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DatasetError, match=r"No image files found in the specified path: '.*empty' has 0 entries"):
        ImageFolderDataset(str(empty_dir))
    only_json = write_zip(tmp_path / "labels_only.zip", {"dataset.json": b"{}", "a.txt": b"x"}, dirs=["sub/"])
    with pytest.raises(DatasetError, match=r"No image files found .*labels_only\.zip' has 3 entries, none with an"):
        ImageFolderDataset(only_json)


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_corrupt_and_truncated_images(tmp_path, kind, monkeypatch):
    names = ["a.png", "b.png", "c.png", "d.bmp"]
    files, _ = image_files(names, size=16)
    files["b.png"] = files["b.png"][: len(files["b.png"]) // 2]  # Truncated.
    files["c.png"] = b"\x89PNG garbage"  # Corrupt.
    files["d.bmp"] = encode(make_pixels(5, 16), "BMP")[:100]  # Truncated, decoded by Pillow.
    ds = ImageFolderDataset(make_source(kind, tmp_path, files))
    assert len(ds) == 4  # Later images are checked when read.
    ds[0]
    for i, name in [(1, "b.png"), (2, "c.png"), (3, "d.bmp")]:
        with pytest.raises(DatasetError, match=rf"^Image '.*{name}'.* is corrupt or truncated: expected a decodable"):
            ds[i]
    # A corrupt first image fails at open; the same with the Pillow decoder.
    monkeypatch.setattr(dataset_module, "pyspng", None)
    bad_first = dict(files, **{"a.png": b"not a png"})
    with pytest.raises(DatasetError, match=r"Image '.*a\.png'.* is corrupt or truncated"):
        ImageFolderDataset(write_folder(tmp_path / "bad_first", bad_first))


ASPECT = "with an aspect ratio between 1:4 and 4:1"


@pytest.mark.parametrize("height,width", [(8, 16), (16, 4)])
def test_nonsquare_images(tmp_path, height, width):
    path = write_folder(tmp_path / "wide", {"a.png": encode(np.zeros([height, width, 3], np.uint8))})
    ds = ImageFolderDataset(path, resolution=max(height, width))
    assert ds.image_shape == [3, height, width] and ds.resolution == max(height, width)
    assert ds[0][0].shape == (3, height, width)
    with pytest.raises(DatasetError, match=r"is \d+x\d+ pixels, expected 32x32 or a longer side of 32$"):
        ImageFolderDataset(path, resolution=32)


def test_bad_first_image_shapes(tmp_path):
    cases = {
        # Non-square images are accepted up to 4:1 (see test_non_square_dataset); 8:1 is not.
        "aspect": (np.zeros([4, 32, 3], np.uint8), r"expected an aspect ratio between 1:4 and 4:1, found 32x4 pixels"),
        "nonpow2": (np.zeros([12, 12, 3], np.uint8), r"expected a width and a height .*powers of two, found 12x12"),
        "nonpow2_side": (np.zeros([8, 12, 3], np.uint8), r"expected a width and a height .* found 12x8"),
        "16bit": (np.zeros([8, 8], np.uint16), r"expected 8-bit pixels \(uint8\), found uint16"),
    }
    for tag, (pixels, message) in cases.items():
        path = write_folder(tmp_path / tag, {"first.png": encode(pixels)})
        with pytest.raises(DatasetError, match=rf"^Image '.*first\.png': {message}"):
            ImageFolderDataset(path)
    path = write_zip(tmp_path / "res.zip", {"a.png": encode(make_pixels(0, 8))})
    with pytest.raises(
        DatasetError,
        match=r"^Image files do not match the specified resolution: 'a\.png' in '.*res\.zip' is 8x8 pixels, "
        r"expected 16x16$",
    ):
        ImageFolderDataset(path, resolution=16)


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_mixed_later_images(tmp_path, kind):
    files = {
        "a.png": encode(make_pixels(0, 8, 3)),
        "b.png": encode(make_pixels(1, 16, 3)),  # Other resolution.
        "c.png": encode(make_pixels(2, 8, 1)),  # Other channel count.
        "d.png": encode(np.zeros([8, 6, 3], np.uint8)),  # A side that is not a power of two.
        "e.png": encode(make_pixels(3, 8, 3)),
    }
    ds = ImageFolderDataset(make_source(kind, tmp_path, files), resolution=8)
    with pytest.raises(DatasetError, match=r"^Image '.*b\.png'.*: expected 8x8 pixels with 3 channel\(s\) like the "):
        ds[1]
    with pytest.raises(DatasetError, match=r"c\.png'.*: expected 8x8 pixels with 3 channel\(s\) .*found 8x8 with 1$"):
        ds[2]
    with pytest.raises(DatasetError, match=r"d\.png'.*: expected a width and a height .*found 6x8"):
        ds[3]
    assert ds[4][0].shape == (3, 8, 8)


LABEL_ERRORS = {
    "syntax": (b'{"labels": [["a.png", 0],', r"is malformed: expected JSON, found invalid text"),
    "binary": (b"\xff\xfe\x00garbage", r"is malformed: expected JSON"),
    "not_object": (b"[1, 2]", r'is malformed: expected a JSON object with a "labels" entry, found \[1, 2\]'),
    "not_list": (b'{"labels": {"a.png": 0}}', r'expected "labels" to be a list of \[file_name, label\] pairs'),
    "bad_pair": (b'{"labels": [["a.png", 0], ["b.png"]]}', r"expected labels\[1\] to be a \[file_name, label\] pair"),
    "missing": (b'{"labels": [["a.png", 0]]}', r"has no label for 1 of 2 images, e.g. 'b\.png'"),
    "unknown": (
        b'{"labels": [["a.png", 0], ["b.png", 1], ["gone.png", 1]]}',
        r"names 1 file\(s\) that are not images of the dataset, e.g. 'gone\.png'",
    ),
    "mixed": (b'{"labels": [["a.png", 0], ["b.png", [0.5, 1.0]]]}', r"mixes label kinds: integer class label for"),
    "negative": (b'{"labels": [["a.png", 0], ["b.png", -1]]}', r"'b\.png' must be a non-negative integer class index"),
    "fraction": (b'{"labels": [["a.png", 0.5], ["b.png", 1]]}', r"'a\.png' must be a non-negative integer class"),
    "infinite": (b'{"labels": [["a.png", 0], ["b.png", Infinity]]}', r"'b\.png' must be a non-negative integer"),
    "null": (b'{"labels": [["a.png", 0], ["b.png", null]]}', r"'b\.png' must be an integer class index or a list"),
    "nested": (b'{"labels": [["a.png", [[1]]], ["b.png", [[2]]]]}', r"'a\.png' must be an integer class index or a"),
    "lengths": (b'{"labels": [["a.png", [1, 2]], ["b.png", [1]]]}', r"vectors must all have the same length, found 2"),
}


@pytest.mark.parametrize("case", sorted(LABEL_ERRORS))
def test_bad_labels_file(tmp_path, case):
    content, message = LABEL_ERRORS[case]
    files, _ = image_files(["a.png", "b.png"])
    files["dataset.json"] = content
    path = write_zip(tmp_path / "lab.zip", files)
    with pytest.raises(DatasetError, match=r"^Labels file 'dataset\.json' in '.*lab\.zip'.*" + message):
        ImageFolderDataset(path, use_labels=True)
    # Without use_labels the labels file is never read.
    assert not ImageFolderDataset(path, use_labels=False).has_labels
