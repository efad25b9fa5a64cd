"""training/dataset.py guards (issue 12) and features (issues 14, 15): hidden entries, staging leftovers, size limits
checked before reading, label limits, one-line errors from DataLoader workers, class names, non-square images."""

import json
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from test_dataset import encode, image_files, make_pixels, to_chw, write_folder, write_zip

from training import dataset as dataset_module
from training.dataset import DatasetError, ImageFolderDataset

# ----------------------------------------------------------------------------
# Hidden entries and staging leftovers.


def test_hidden_entries_are_never_part_of_a_folder_dataset(tmp_path):
    files, pixels = image_files(["a.png", "sub/b.png"])
    hidden, _ = image_files([".c.png", ".cache/d.png", "sub/._b.png", ".DS_Store"])
    path = write_folder(tmp_path / "data", {**files, **hidden})
    ds = ImageFolderDataset(path)
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[1][0], to_chw(pixels["sub/b.png"]))


def test_hidden_entries_are_never_part_of_a_zip_dataset(tmp_path):
    files, _ = image_files(["a.png", "sub/b.png"])
    hidden, _ = image_files([".c.png", ".cache/d.png", "__MACOSX/sub/._b.png"])
    hidden[".dataset.json"] = b"not json"
    ds = ImageFolderDataset(write_zip(tmp_path / "d.zip", {**files, **hidden}))
    assert len(ds) == 2 and ds._image_fnames == ["a.png", "sub/b.png"]


def test_staging_folder_of_an_unfinished_conversion_is_refused(tmp_path):
    """dataset_tool.py killed while filling an existing empty folder leaves only its hidden staging folder there."""
    files, _ = image_files(["00000/img00000000.png", "00000/img00000001.png"])
    path = write_folder(tmp_path / "data", {".dataset_tool.x1y2.tmp/" + name: data for name, data in files.items()})
    with pytest.raises(DatasetError, match=r"^'.*data/\.dataset_tool\.x1y2\.tmp' is the hidden staging folder of a "):
        ImageFolderDataset(path)
    # Killed while moving the entries up: part of the images already in place; still refused.
    write_folder(tmp_path / "data", {"00000/img00000000.png": files["00000/img00000000.png"]})
    with pytest.raises(DatasetError, match=r"did not finish, so '.*data' holds at most part of a dataset"):
        ImageFolderDataset(path)


def test_missing_dataset_names_the_staging_leftover_beside_it(tmp_path):
    (tmp_path / ".faces.zip.k3j4.tmp").write_bytes(b"partial")
    with pytest.raises(DatasetError, match=r"'.*faces\.zip' does not exist \(found '.*\.faces\.zip\.k3j4\.tmp' beside"):
        ImageFolderDataset(str(tmp_path / "faces.zip"))
    with pytest.raises(DatasetError, match=r"'.*other\.zip' does not exist$"):
        ImageFolderDataset(str(tmp_path / "other.zip"))


# ----------------------------------------------------------------------------
# Sizes checked before reading or decoding.


def _declare_member_size(zip_path, member, size):
    """Rewrite the uncompressed size a zip's central directory declares for `member` (the data stays as it is)."""
    data = bytearray(open(zip_path, "rb").read())
    pos = 0
    while True:  # Central directory entries: signature, ..., size at +24, name length at +28, name at +46.
        pos = data.index(b"PK\x01\x02", pos)
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46 : pos + 46 + name_len]) == member.encode():
            break
        pos += 4
    struct.pack_into("<I", data, pos + 24, size)
    open(zip_path, "wb").write(bytes(data))


def test_zip_member_declaring_gigabytes_is_refused_before_reading(tmp_path, monkeypatch):
    files, _ = image_files(["a.png", "b.png"])
    path = write_zip(tmp_path / "bomb.zip", files)
    _declare_member_size(path, "b.png", 2 << 30)  # a 2 GiB member in a tiny zip
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("b.png").file_size == 2 << 30
    ds = ImageFolderDataset(path)
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name: read.append(name) or b"")
    with pytest.raises(
        DatasetError,
        match=r"^Cannot read 'b\.png' in '.*bomb\.zip': it holds 2147483648 bytes \(uncompressed\), more than the "
        r"536870912 accepted \(training\.dataset\.MAX_IMAGE_FILE_BYTES\)$",
    ):
        ds[1]
    assert read == []  # refused before anything was read


def _png_header_only(width, height):
    """A PNG whose IHDR declares width x height RGB pixels, followed by an empty image data chunk."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("use_pyspng", [True, False])
def test_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch, use_pyspng):
    if not use_pyspng:
        monkeypatch.setattr(dataset_module, "pyspng", None)
    elif dataset_module.pyspng is None:
        pytest.skip("pyspng not installed")
    files, _ = image_files(["a.png"])
    files["b.png"] = _png_header_only(50000, 40000)
    ds = ImageFolderDataset(write_zip(tmp_path / "big.zip", files))
    with pytest.raises(DatasetError, match=r"^Image 'b\.png' in '.*big\.zip': the image declares .*pixels"):
        ds[1]


# ----------------------------------------------------------------------------
# Labels: limits named in one line.

LABEL_LIMITS = {
    "huge_class": (20000000, r"must be a non-negative integer class index below 100000, found 20000000 \(above the"),
    "beyond_int64": (2**70, r"must be a non-negative integer class index below 100000, found 1180591620717411303424"),
    "nan_vector": (float("nan"), r"must be a vector of finite float32 numbers, found \[1, NaN\] \(entry 1 is not a"),
    "inf_vector": (
        float("inf"),
        r"must be a vector of finite float32 numbers, found \[1, Infinity\] \(entry 1 is not a finite",
    ),
    "huge_vector": (
        10**40,
        r"must be a vector of finite float32 numbers, found \[1, 1000.*\(entry 1 is beyond the float32",
    ),
}


@pytest.mark.parametrize("case", sorted(LABEL_LIMITS))
def test_label_limits(tmp_path, case):
    value, message = LABEL_LIMITS[case]
    files, _ = image_files(["a.png", "b.png"])
    if case.endswith("vector"):
        pairs = [["a.png", [1, 2]], ["b.png", [1, value]]]
    else:
        pairs = [["a.png", 0], ["b.png", value]]
    files["dataset.json"] = json.dumps({"labels": pairs}).encode()
    with pytest.raises(DatasetError, match=r"^Labels file 'dataset\.json' in '.*l\.zip': label of 'b\.png' " + message):
        ImageFolderDataset(write_zip(tmp_path / "l.zip", files), use_labels=True)


def test_largest_class_index_is_accepted(tmp_path):
    files, _ = image_files(["a.png"])
    files["dataset.json"] = json.dumps({"labels": [["a.png", dataset_module.MAX_CLASSES - 1]]}).encode()
    ds = ImageFolderDataset(write_zip(tmp_path / "l.zip", files), use_labels=True)
    assert ds.label_dim == dataset_module.MAX_CLASSES


# ----------------------------------------------------------------------------
# Class names (dataset_tool.py --subfolders-as-labels).


def test_class_names(tmp_path):
    files, _ = image_files(["a.png", "b.png"])
    doc = {"labels": [["a.png", 1], ["b.png", 0]], "class_names": ["cat", "dog"], "some_future_key": {"x": 1}}
    files["dataset.json"] = json.dumps(doc).encode()
    path = write_zip(tmp_path / "c.zip", files)
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.class_names == ["cat", "dog"] and ds.label_dim == 2
    assert pickle.loads(pickle.dumps(ds)).class_names == ["cat", "dog"]
    assert ImageFolderDataset(path, use_labels=False).class_names is None
    files["dataset.json"] = json.dumps({"labels": [["a.png", 1], ["b.png", 0]]}).encode()
    assert ImageFolderDataset(write_zip(tmp_path / "n.zip", files), use_labels=True).class_names is None


@pytest.mark.parametrize(
    "labels, names, message",
    [
        ([0, 2], ["cat", "dog"], r'class index 2 has no name; "class_names" names 2 classes'),
        ([0, 1], ["cat", 3], r'expected "class_names" to be a list of strings, found \["cat", 3\]'),
        ([0, 1], ["cat", "cat"], r"\"class_names\" names 'cat' more than once"),
        ([[0.5], [1.5]], ["cat"], r'"class_names" needs integer class labels, found label vectors'),
    ],
)
def test_bad_class_names(tmp_path, labels, names, message):
    files, _ = image_files(["a.png", "b.png"])
    doc = {"labels": [["a.png", labels[0]], ["b.png", labels[1]]], "class_names": names}
    files["dataset.json"] = json.dumps(doc).encode()
    with pytest.raises(DatasetError, match=r"^Labels file 'dataset\.json' in '.*c\.zip': " + message):
        ImageFolderDataset(write_zip(tmp_path / "c.zip", files), use_labels=True)


# ----------------------------------------------------------------------------
# One-line errors, also from DataLoader worker processes.


def test_dataset_error_pickles_with_its_message():
    err = pickle.loads(pickle.dumps(DatasetError("Image 'a.png' in 'x.zip' is corrupt")))
    assert type(err) is DatasetError and str(err) == "Image 'a.png' in 'x.zip' is corrupt"


def test_corrupt_image_in_a_dataloader_worker_is_one_line(tmp_path):
    files, _ = image_files(["a.png", "b.png", "c.png"])
    files["b.png"] = files["b.png"][:40]  # truncated
    ds = ImageFolderDataset(write_zip(tmp_path / "w.zip", files))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DatasetError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith("Image 'b.png' in '") and "w.zip' is corrupt or truncated" in message
    assert "\n" not in message and "Traceback" not in message
    assert "Traceback" in info.value.worker_report  # the worker's traceback is kept for debugging


# ----------------------------------------------------------------------------
# Non-square datasets.


@pytest.mark.parametrize("height, width", [(32, 64), (64, 32), (8, 32), (32, 8)])
def test_non_square_dataset(tmp_path, height, width):
    pixels = [np.random.RandomState(i).randint(0, 256, size=[height, width, 3]).astype(np.uint8) for i in range(2)]
    path = write_folder(tmp_path / "wide", {f"{i}.png": encode(p) for i, p in enumerate(pixels)})
    ds = ImageFolderDataset(path, resolution=max(height, width), xflip=True)
    assert ds.image_shape == [3, height, width]
    assert (ds.height, ds.width, ds.resolution, ds.is_square) == (height, width, max(height, width), False)
    np.testing.assert_array_equal(ds[1][0], to_chw(pixels[1]))
    np.testing.assert_array_equal(ds[3][0], to_chw(pixels[1])[:, :, ::-1])  # x-flip mirrors along the width
    with pytest.raises(DatasetError, match=r"is \d+x\d+ pixels, expected 16x16 or a longer side of 16$"):
        ImageFolderDataset(path, resolution=16)


def test_square_dataset_properties_unchanged(tmp_path):
    ds = ImageFolderDataset(write_folder(tmp_path / "sq", {"a.png": encode(make_pixels(0, 16))}))
    assert (ds.resolution, ds.height, ds.width, ds.is_square) == (16, 16, 16, True)
