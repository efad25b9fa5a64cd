"""dataset_tool.py: every source type, both destination types, transforms, dataset.json and the error cases."""

import errno
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT

import dataset_tool

# ----------------------------------------------------------------------------------------------------------------------
# Helpers


def run_tool(*args: str):
    return CliRunner().invoke(dataset_tool.main, [str(a) for a in args], catch_exceptions=False)


def save_image(path, array: np.ndarray):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array).save(path)


def random_image(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = [height, width] if channels == 1 else [height, width, channels]
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def read_output(dest) -> dict:
    """Return {name: bytes} for every file of a destination folder or zip."""
    dest = str(dest)
    if dest.endswith(".zip"):
        with zipfile.ZipFile(dest) as z:
            return {name: z.read(name) for name in z.namelist()}
    files = {}
    for root, _dirs, names in os.walk(dest):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, dest).replace(os.sep, "/")] = f.read()
    return files


def decode(data: bytes) -> tuple[np.ndarray, str]:
    with PIL.Image.open(io.BytesIO(data)) as img:
        return np.array(img), img.mode


def assert_no_leftovers(folder, expected: set):
    """Nothing but `expected` (in particular no temporary files) may remain in `folder`."""
    assert set(os.listdir(folder)) == expected


# ----------------------------------------------------------------------------------------------------------------------
# Image folder and zip sources


def test_archive_name_layout():
    assert dataset_tool.archive_name(0) == "00000/img00000000.png"
    assert dataset_tool.archive_name(12345) == "00012/img00012345.png"
    assert dataset_tool.archive_name(49999) == "00049/img00049999.png"


def test_folder_to_zip_nested_sorted_componentwise(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    # Path-component order puts a/b.png before a-c.png, plain string order would not ('-' < '/').
    names = ["a/b.png", "a-c.png", "z/deeper/d.bmp", "y.jpeg_not_image.txt"]
    images = {}
    for name in names[:3]:
        images[name] = random_image(rng, 8, 8)
        save_image(src / name, images[name])
    (src / names[3]).write_text("not an image")
    dest = tmp_path / "out" / "ds.zip"  # parent folder is created on demand

    result = run_tool("--source", src, "--dest", dest)
    assert result.exit_code == 0, result.stdout

    with zipfile.ZipFile(dest) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    files = read_output(dest)
    assert sorted(files) == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png", "dataset.json"]
    assert json.loads(files["dataset.json"]) == {"labels": None}
    for idx, src_name in enumerate(["a/b.png", "a-c.png", "z/deeper/d.bmp"]):
        pixels, mode = decode(files[dataset_tool.archive_name(idx)])
        assert mode == "RGB"
        np.testing.assert_array_equal(pixels, images[src_name])
    assert_no_leftovers(tmp_path / "out", {"ds.zip"})


def test_png_is_stored_uncompressed(tmp_path):
    src = tmp_path / "src"
    save_image(src / "flat.png", np.zeros([16, 16, 3], np.uint8))
    run_tool("--source", src, "--dest", tmp_path / "out")
    data = (tmp_path / "out" / "00000" / "img00000000.png").read_bytes()
    # Compression level 0 keeps the raw scanlines (16 rows x (1 filter byte + 48)), even for a constant image.
    assert len(data) > 16 * 49


def test_folder_grayscale_to_folder_with_labels(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    images = [random_image(rng, 4, 4, channels=1) for _ in range(3)]
    for i, img in enumerate(images):
        save_image(src / "sub" / f"g{i}.png", img)
    labels = [["sub/g0.png", 3], ["sub/g1.png", [0.5, 1.5]], ["sub/g2.png", 0], ["missing.png", 7]]
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    dest = tmp_path / "dest"
    dest.mkdir()  # an existing empty folder is accepted

    result = run_tool("--source", src, "--dest", dest)
    assert result.exit_code == 0, result.stdout

    files = read_output(dest)
    assert set(files) == {f"00000/img0000000{i}.png" for i in range(3)} | {"dataset.json"}
    assert json.loads(files["dataset.json"]) == {
        "labels": [["00000/img00000000.png", 3], ["00000/img00000001.png", [0.5, 1.5]], ["00000/img00000002.png", 0]]
    }
    for i, img in enumerate(images):
        pixels, mode = decode(files[dataset_tool.archive_name(i)])
        assert mode == "L"
        np.testing.assert_array_equal(pixels, img)
    assert_no_leftovers(tmp_path, {"src", "dest"})


def test_partial_labels_become_null(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    for i in range(3):
        save_image(src / f"{i}.png", random_image(rng, 4, 4))
    (src / "dataset.json").write_text(json.dumps({"labels": [["0.png", 1], ["2.png", 0]]}))
    result = run_tool("--source", src, "--dest", tmp_path / "d.zip")
    assert result.exit_code == 0, result.stdout
    assert json.loads(read_output(tmp_path / "d.zip")["dataset.json"]) == {"labels": None}
    # Kept as specified, but not silently: the count and the first unlabelled source name are reported.
    expected = "Warning: 1 of 3 images have no label in dataset.json (first: 1.png); writing the dataset without labels"
    assert expected in result.stderr.splitlines()

    # Names that match no image (here: wrong folder prefix) lose every label, also with a warning.
    (src / "dataset.json").write_text(json.dumps({"labels": [[f"other/{i}.png", i] for i in range(3)]}))
    result = run_tool("--source", src, "--dest", tmp_path / "e.zip")
    assert json.loads(read_output(tmp_path / "e.zip")["dataset.json"]) == {"labels": None}
    assert "Warning: 3 of 3 images have no label in dataset.json (first: 0.png)" in result.stderr


@pytest.mark.parametrize("labels_file", [None, {"labels": None}, {"labels": [[f"{i}.png", i] for i in range(2)]}])
def test_no_label_warning_without_labels_or_with_all_labels(tmp_path, labels_file):
    rng = np.random.default_rng(15)
    for i in range(2):
        save_image(tmp_path / "src" / f"{i}.png", random_image(rng, 4, 4))
    if labels_file is not None:
        (tmp_path / "src" / "dataset.json").write_text(json.dumps(labels_file))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "d.zip")
    assert result.exit_code == 0 and "Warning" not in result.stderr


def palette_image(seed: int, size: int = 8, colours: int = 16) -> PIL.Image.Image:
    """A 'P' image with `colours` random palette entries: its indices (< colours) differ from its colours."""
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, colours, size=[size, size], dtype=np.uint8), mode="P")
    image.putpalette(rng.integers(0, 256, size=colours * 3).tolist())
    return image


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_palette_images_become_rgb(tmp_path, kind):
    """GIF and palette PNG/BMP files give their RGB colours (transparency dropped), not their palette indices."""
    images = {name: palette_image(seed) for seed, name in enumerate(["a.gif", "b.png", "c.bmp", "d.png"])}
    encoded = {}
    for name, image in images.items():
        buf = io.BytesIO()
        extra = {"transparency": 5} if name == "d.png" else {}
        image.save(buf, format={"gif": "GIF", "png": "PNG", "bmp": "BMP"}[name[-3:]], **extra)
        encoded[name] = buf.getvalue()
    if kind == "folder":
        source = tmp_path / "src"
        source.mkdir()
        for name, data in encoded.items():
            (source / name).write_bytes(data)
    else:
        source = tmp_path / "src.zip"
        with zipfile.ZipFile(source, "w") as z:
            for name, data in encoded.items():
                z.writestr(name, data)
    result = run_tool("--source", source, "--dest", tmp_path / "out.zip")
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "out.zip")
    for idx, image in enumerate(images.values()):
        pixels, mode = decode(files[dataset_tool.archive_name(idx)])
        expected = np.array(image.convert("RGB"))
        assert mode == "RGB" and expected.max() > 15  # colours, not the 16 indices
        np.testing.assert_array_equal(pixels, expected)


def test_palette_with_alpha_becomes_rgb(monkeypatch):
    """'PA' images (which Pillow cannot save to a file to test with) are converted like 'P' ones."""
    image = palette_image(9).convert("PA")
    expected = np.array(image.convert("RGB"))
    assert expected.max() > 15
    monkeypatch.setattr(PIL.Image, "open", lambda _source: image)
    np.testing.assert_array_equal(dataset_tool._decode_with_pil("unused.png"), expected)


@pytest.mark.parametrize(
    "mode, fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("RGB", "TIFF"), ("L", "BMP")]
)
def test_other_modes_decode_as_stored(tmp_path, mode, fmt):
    """Only palette modes are converted; every other image is the bit-identical array Pillow stores."""
    rng = np.random.default_rng(17)
    channels = len(mode)
    pixels = random_image(rng, 8, 8, channels)
    path = tmp_path / f"x.{fmt.lower()}"
    PIL.Image.fromarray(pixels, mode=mode).save(path, format=fmt)
    decoded = dataset_tool._decode_with_pil(path)
    with PIL.Image.open(path) as image:
        assert image.mode == mode
        stored = np.array(image)
    assert decoded.dtype == stored.dtype and decoded.shape == stored.shape
    np.testing.assert_array_equal(decoded, stored)
    np.testing.assert_array_equal(decoded, pixels)


def test_zip_source_with_labels_and_max_images(tmp_path):
    rng = np.random.default_rng(4)
    source = tmp_path / "source.zip"
    images = {name: random_image(rng, 8, 8) for name in ["b/x.png", "a.png", "c.PNG"]}
    with zipfile.ZipFile(source, "w") as z:
        for name, img in images.items():
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format="png")
            z.writestr(name, buf.getvalue())
        z.writestr("readme.txt", "ignored")
        z.writestr("dataset.json", json.dumps({"labels": [["a.png", 1], ["b/x.png", 2], ["c.PNG", 0]]}))

    result = run_tool("--source", source, "--dest", tmp_path / "out.zip", "--max-images", 2)
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "out.zip")
    # Member names sort as plain strings: 'a.png' < 'b/x.png' < 'c.PNG'; the limit keeps the first two.
    assert json.loads(files["dataset.json"]) == {"labels": [["00000/img00000000.png", 1], ["00000/img00000001.png", 2]]}
    np.testing.assert_array_equal(decode(files["00000/img00000000.png"])[0], images["a.png"])
    np.testing.assert_array_equal(decode(files["00000/img00000001.png"])[0], images["b/x.png"])
    assert len(files) == 3


def test_max_images_zero_still_converts_one(tmp_path):
    """Reference edge case: the stop test runs after yielding, so a limit of 0 yields the first image."""
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    for i in range(3):
        save_image(src / f"{i}.png", random_image(rng, 4, 4))
    result = run_tool("--source", src, "--dest", tmp_path / "out", "--max-images", 0)
    assert sorted(read_output(tmp_path / "out")) == ["00000/img00000000.png", "dataset.json"]
    # ... which is said, since 0 reads like "none" (issue 12: no silent surprises).
    assert "Warning: --max-images=0 still converts the first image (the reference's behaviour)" in result.stderr


def test_empty_folder_gives_empty_label_list(tmp_path):
    (tmp_path / "src").mkdir()
    dest = tmp_path / "out.zip"
    result = run_tool("--source", tmp_path / "src", "--dest", dest)
    assert result.exit_code == 0, result.stdout
    assert read_output(dest) == {"dataset.json": b'{"labels": []}'}
    assert f"Warning: no images were written to {dest}: the source holds no image files" in result.stderr

    (tmp_path / "src" / "notes.txt").write_text("not an image")  # non-image files are no images either
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o2")
    assert result.exit_code == 0 and read_output(tmp_path / "o2") == {"dataset.json": b'{"labels": []}'}
    assert f"Warning: no images were written to {tmp_path / 'o2'}: the source holds no image files" in result.stderr


def test_no_warning_when_images_are_written(tmp_path):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--max-images", 0)
    assert result.exit_code == 0 and "Warning: no images were written" not in result.stderr
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--max-images", 1)
    assert result.exit_code == 0 and "Warning" not in result.stderr


def test_existing_zip_is_replaced(tmp_path):
    rng = np.random.default_rng(6)
    save_image(tmp_path / "src" / "a.png", random_image(rng, 4, 4))
    dest = tmp_path / "out.zip"
    dest.write_bytes(b"old content")
    assert run_tool("--source", tmp_path / "src", "--dest", dest).exit_code == 0
    assert sorted(read_output(dest)) == ["00000/img00000000.png", "dataset.json"]


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10, MNIST and LSUN sources


@pytest.fixture(scope="module")
def cifar_tarball(tmp_path_factory):
    """A CIFAR-10-format tarball: five pickled batches of 10000 images (mostly zeros to keep it small)."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"
    data = np.zeros([50000, 3 * 32 * 32], np.uint8)
    data[:5] = rng.integers(0, 256, size=[5, 3 * 32 * 32], dtype=np.uint8)
    data[0, 0], data[0, 1] = 0, 255
    labels = [int(x) for x in np.arange(50000) % 10]
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for b in range(5):
            batch = {"batch_label": f"batch {b + 1}", "data": data[b * 10000 : (b + 1) * 10000]}
            batch["labels"] = labels[b * 10000 : (b + 1) * 10000]
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{b + 1}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path, data, labels


def test_cifar10(tmp_path, cifar_tarball):
    path, data, labels = cifar_tarball
    result = run_tool("--source", path, "--dest", tmp_path / "cifar.zip", "--max-images", 4)
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "cifar.zip")
    meta = json.loads(files["dataset.json"])
    assert meta == {"labels": [[dataset_tool.archive_name(i), labels[i]] for i in range(4)]}
    assert all(isinstance(label, int) for _name, label in meta["labels"])
    for i in range(4):
        pixels, mode = decode(files[dataset_tool.archive_name(i)])
        assert mode == "RGB"
        np.testing.assert_array_equal(pixels, data[i].reshape(3, 32, 32).transpose(1, 2, 0))


def test_output_loads_in_training_dataset(tmp_path, cifar_tarball):
    """The archive is what training.dataset.ImageFolderDataset expects: images CHW uint8, one-hot labels."""
    from training.dataset import ImageFolderDataset

    path, data, labels = cifar_tarball
    assert run_tool("--source", path, "--dest", tmp_path / "cifar.zip", "--max-images", 3).exit_code == 0
    dataset = ImageFolderDataset(path=str(tmp_path / "cifar.zip"), use_labels=True)
    assert len(dataset) == 3 and dataset.resolution == 32 and dataset.num_channels == 3
    for i in range(3):
        image, label = dataset[i]
        np.testing.assert_array_equal(image, data[i].reshape(3, 32, 32))
        assert label.shape == (max(labels[:3]) + 1,) and label[labels[i]] == 1 and label.sum() == 1
    dataset.close()


def test_cifar10_wrong_size_is_reported(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for b in range(5):
            payload = pickle.dumps({"data": np.zeros([2, 3072], np.uint8), "labels": [0, 1]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{b + 1}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    result = run_tool("--source", path, "--dest", tmp_path / "out.zip")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"Error: {path}: expected 50000 uint8 images of shape (32, 32, 3)")
    assert not (tmp_path / "out.zip").exists()


def write_mnist(folder, images: np.ndarray, labels: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(bytes(16) + images.tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(bytes(8) + labels.tobytes())


def test_mnist(tmp_path):
    rng = np.random.default_rng(8)
    images = np.zeros([60000, 28, 28], np.uint8)
    images[:3] = rng.integers(0, 256, size=[3, 28, 28], dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = (np.arange(60000) % 10).astype(np.uint8)[::-1].copy()
    write_mnist(tmp_path / "mnist", images, labels)

    source = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    result = run_tool("--source", source, "--dest", tmp_path / "out", "--max-images", 3)
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "out")
    assert json.loads(files["dataset.json"]) == {"labels": [[dataset_tool.archive_name(i), 9 - i] for i in range(3)]}
    for i in range(3):
        pixels, mode = decode(files[dataset_tool.archive_name(i)])
        assert mode == "L" and pixels.shape == (32, 32)
        np.testing.assert_array_equal(pixels[2:30, 2:30], images[i])
        assert not pixels[:2].any() and not pixels[30:].any() and not pixels[:, :2].any() and not pixels[:, 30:].any()


def test_mnist_missing_labels_file(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, np.zeros([1, 28, 28], np.uint8), np.zeros([1], np.uint8))
    os.remove(folder / "train-labels-idx1-ubyte.gz")
    result = run_tool("--source", folder / "train-images-idx3-ubyte.gz", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1
    assert "Error: Missing MNIST labels file" in result.stdout


def write_lmdb(path, values: list[bytes]):
    lmdb = pytest.importorskip("lmdb")
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(f"key{i:03d}".encode(), value)


def png_bytes(img: np.ndarray, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def test_lsun_lmdb_skips_unreadable_entries_by_default(tmp_path):
    rng = np.random.default_rng(9)
    images = [random_image(rng, 8, 8) for _ in range(3)]
    # A grayscale entry is decoded as colour (3 channels), as OpenCV's colour mode does.
    gray = random_image(rng, 8, 8, channels=1)
    values = [png_bytes(images[0]), b"garbage", png_bytes(images[1]), png_bytes(gray), png_bytes(images[2])]
    source = tmp_path / "church_lmdb"
    write_lmdb(source, values)

    # The corrupt entry counts toward --max-images but gets no output index.
    result = run_tool("--source", str(source) + "/", "--dest", tmp_path / "out.zip", "--max-images", 4)
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "out.zip")
    assert sorted(files) == [dataset_tool.archive_name(i) for i in range(3)] + ["dataset.json"]
    assert json.loads(files["dataset.json"]) == {"labels": None}
    np.testing.assert_array_equal(decode(files[dataset_tool.archive_name(0)])[0], images[0])
    np.testing.assert_array_equal(decode(files[dataset_tool.archive_name(1)])[0], images[1])
    np.testing.assert_array_equal(decode(files[dataset_tool.archive_name(2)])[0], np.stack([gray] * 3, axis=2))


def test_lsun_lmdb_stop_on_unreadable(tmp_path):
    rng = np.random.default_rng(10)
    source = tmp_path / "cat_lmdb"
    write_lmdb(source, [png_bytes(random_image(rng, 8, 8)), b"garbage"])
    result = run_tool("--source", source, "--dest", tmp_path / "out.zip", "--on-unreadable", "stop")
    assert result.exit_code == 1
    assert f"Error: Cannot read source image {source} (key key001)" in result.stdout
    assert_no_leftovers(tmp_path, {"cat_lmdb"})


def test_lsun_without_lmdb_package_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "x_lmdb").mkdir()
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` raise ImportError
    result = run_tool("--source", tmp_path / "x_lmdb", "--dest", tmp_path / "out.zip")
    assert result.exit_code == 1
    assert "pip install lmdb" in result.stdout


# ----------------------------------------------------------------------------------------------------------------------
# Transforms


def test_resize_without_transform(tmp_path):
    rng = np.random.default_rng(11)
    img = random_image(rng, 12, 20)
    save_image(tmp_path / "src" / "a.png", img)
    for filt, resample in [("lanczos", PIL.Image.LANCZOS), ("box", PIL.Image.BOX)]:
        dest = tmp_path / f"{filt}.zip"
        args = ["--source", tmp_path / "src", "--dest", dest, "--width", 8, "--height", 8, "--resize-filter", filt]
        assert run_tool(*args).exit_code == 0
        expected = np.array(PIL.Image.fromarray(img).resize((8, 8), resample))
        np.testing.assert_array_equal(decode(read_output(dest)["00000/img00000000.png"])[0], expected)


def test_center_crop(tmp_path):
    rng = np.random.default_rng(12)
    img = random_image(rng, 10, 17)
    save_image(tmp_path / "src" / "a.png", img)
    args = ["--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--transform", "center-crop"]
    assert run_tool(*args, "--width", 4, "--height", 4).exit_code == 0
    crop = img[0:10, 3:13]  # s = 10, columns (17-10)//2 = 3 .. (17+10)//2 - 1 = 12
    expected = np.array(PIL.Image.fromarray(crop).resize((4, 4), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])[0], expected)


def test_center_crop_wide_letterbox_and_drop(tmp_path):
    rng = np.random.default_rng(13)
    wide = random_image(rng, 13, 16)  # ch = round(16*13/16) = 13 >= 12: kept
    narrow = random_image(rng, 20, 12)  # narrower than --width: dropped, its index stays unused
    short = random_image(rng, 8, 32)  # ch = round(16*8/32) = 4 < 12: dropped
    for name, img in [("a.png", wide), ("b.png", narrow), ("c.png", short), ("d.png", wide[::-1])]:
        save_image(tmp_path / "src" / name, img)
    args = ["--source", tmp_path / "src", "--dest", tmp_path / "o", "--transform", "center-crop-wide"]
    result = run_tool(*args, "--width", 16, "--height", 12, "--resize-filter", "box")
    assert result.exit_code == 0, result.stdout
    files = read_output(tmp_path / "o")
    assert sorted(files) == ["00000/img00000000.png", "00000/img00000003.png", "dataset.json"]
    for name, img in [("00000/img00000000.png", wide), ("00000/img00000003.png", wide[::-1])]:
        expected = np.zeros([16, 16, 3], np.uint8)
        rows = img[0:13]  # (13-13)//2 .. (13+13)//2 - 1
        expected[2:14] = np.array(PIL.Image.fromarray(np.ascontiguousarray(rows)).resize((16, 12), PIL.Image.BOX))
        np.testing.assert_array_equal(decode(files[name])[0], expected)


def test_center_crop_wide_dropping_every_image_warns(tmp_path):
    rng = np.random.default_rng(16)
    save_image(tmp_path / "src" / "a.png", random_image(rng, 20, 12))  # narrower than --width
    save_image(tmp_path / "src" / "b.png", random_image(rng, 8, 32))  # too short once scaled
    dest = tmp_path / "o.zip"
    args = ["--source", tmp_path / "src", "--dest", dest, "--transform", "center-crop-wide"]
    result = run_tool(*args, "--width", 16, "--height", 12)
    assert result.exit_code == 0, result.stdout
    assert read_output(dest) == {"dataset.json": b'{"labels": []}'}
    assert f"Warning: no images were written to {dest}: 2 images were skipped by --transform=center-crop-wide" in (
        result.stderr
    )


def test_center_crop_wide_height_above_width_is_an_error(tmp_path):
    """The letter-box canvas is --width square, so --height > --width could never produce an image."""
    save_image(tmp_path / "src" / "a.png", np.zeros([64, 16, 3], np.uint8))  # tall enough to pass the drop test
    args = ["--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--transform", "center-crop-wide"]
    result = run_tool(*args, "--width", 16, "--height", 32)
    expected = "Error: --height must not exceed --width when using center-crop-wide transform (got 16x32)"
    assert (result.exit_code, result.stdout.strip()) == (1, expected)
    assert_no_leftovers(tmp_path, {"src"})
    assert run_tool(*args, "--width", 16, "--height", 16).exit_code == 0  # equal is fine


# ----------------------------------------------------------------------------------------------------------------------
# Errors


def test_empty_dest_is_usage_error(tmp_path):
    result = CliRunner().invoke(dataset_tool.main, ["--source", str(tmp_path), "--dest", ""])
    assert result.exit_code == 2
    assert "--dest output filename or directory must not be an empty string" in result.stderr


def test_missing_and_unknown_sources(tmp_path):
    missing = tmp_path / "nope"
    result = run_tool("--source", missing, "--dest", tmp_path / "o.zip")
    assert (result.exit_code, result.stdout.strip()) == (1, f"Error: Missing input file or directory: {missing}")
    other = tmp_path / "data.tar"
    other.write_bytes(b"x")
    result = run_tool("--source", other, "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1 and result.stdout.startswith(f"Error: Unknown source type: {other}")
    assert_no_leftovers(tmp_path, {"data.tar"})


def test_existing_empty_dest_folder_is_filled_in_place(tmp_path, monkeypatch):
    """'.', a link to an empty folder, or a folder with its own permissions (e.g. a mount point): written into,
    not replaced."""
    rng = np.random.default_rng(8)
    save_image(tmp_path / "src" / "a.png", random_image(rng, 4, 4))
    expected = ["00000/img00000000.png", "dataset.json"]

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert run_tool("--source", tmp_path / "src", "--dest", ".").exit_code == 0
    assert sorted(read_output(tmp_path / "here")) == expected
    assert_no_leftovers(tmp_path / "here", {"00000", "dataset.json"})
    monkeypatch.chdir(tmp_path)

    (tmp_path / "target").mkdir()
    os.chmod(tmp_path / "target", 0o750)
    os.symlink(tmp_path / "target", tmp_path / "link")
    assert run_tool("--source", tmp_path / "src", "--dest", tmp_path / "link").exit_code == 0
    assert os.path.islink(tmp_path / "link")
    assert sorted(read_output(tmp_path / "target")) == expected
    assert os.stat(tmp_path / "target").st_mode & 0o777 == 0o750


def test_linked_zip_dest_is_written_through(tmp_path):
    rng = np.random.default_rng(9)
    save_image(tmp_path / "src" / "a.png", random_image(rng, 4, 4))
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store" / "real.zip", tmp_path / "link.zip")
    assert run_tool("--source", tmp_path / "src", "--dest", tmp_path / "link.zip").exit_code == 0
    assert os.path.islink(tmp_path / "link.zip")
    assert sorted(read_output(tmp_path / "store" / "real.zip")) == ["00000/img00000000.png", "dataset.json"]
    assert_no_leftovers(tmp_path / "store", {"real.zip"})


def test_nonempty_dest_folder(tmp_path):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("x")
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "dest")
    assert (result.exit_code, result.stdout.strip()) == (1, "Error: --dest folder must be empty")
    assert os.listdir(tmp_path / "dest") == ["keep.txt"]


@pytest.mark.parametrize(
    "transform, message",
    [
        ("center-crop", "Error: must specify --width and --height when using center-croptransform"),
        ("center-crop-wide", "Error: must specify --width and --height when using center-crop-wide transform"),
    ],
)
def test_crop_needs_width_and_height(tmp_path, transform, message):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    result = run_tool(
        "--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--transform", transform, "--width", 4
    )
    assert (result.exit_code, result.stdout.strip()) == (1, message)
    assert_no_leftovers(tmp_path, {"src"})


@pytest.mark.parametrize(
    "shape, message",
    [
        # Non-square (issue 15) up to 4:1 and RGBA (issue 14) are accepted now: see test_dataset_tool_features.py.
        (
            (4, 32, 4),
            "Error: Image dimensions after scale and crop are required to be square or of an aspect ratio between "
            "1:4 and 4:1.  Got 32x4",
        ),
        ((6, 6, 3), "Error: Image width/height after scale and crop are required to be power-of-two"),
        ((8, 6, 3), "Error: Image width/height after scale and crop are required to be power-of-two"),
    ],
)
def test_first_image_checks(tmp_path, shape, message):
    save_image(tmp_path / "src" / "a.png", np.zeros(shape, np.uint8))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "out")
    assert (result.exit_code, result.stdout.strip()) == (1, message)
    assert_no_leftovers(tmp_path, {"src"})


def test_first_image_channel_check():
    """No decoder yields other counts than 1-4 (gray+alpha becomes RGBA); the check still names the choices."""
    with pytest.raises(dataset_tool.DatasetToolError, match=r"^Input images must be stored as RGB, RGBA or grayscale"):
        dataset_tool._check_first_image(4, 4, 5)


@pytest.mark.parametrize(
    "dest, reason",
    [
        ("/proc/x.zip", "No such file or directory (creating a temporary file in /proc)"),
        ("/proc/x", "No such file or directory (creating a temporary folder in /proc)"),
        ("/proc/sub/x.zip", "No such file or directory (creating folder /proc/sub)"),
        ("{tmp}/file/x.zip", "{tmp}/file is not a directory"),
        ("{tmp}/file/x", "{tmp}/file is not a directory"),
        ("{tmp}/file/deeper/x.zip", "Not a directory (creating folder {tmp}/file/deeper)"),
    ],
)
def test_unwritable_dest_is_a_one_line_error(tmp_path, dest, reason):
    if not os.path.isdir("/proc") and dest.startswith("/proc"):
        pytest.skip("needs Linux /proc")
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    (tmp_path / "file").write_text("a file where a folder is needed")
    dest, reason = dest.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    result = run_tool("--source", tmp_path / "src", "--dest", dest)  # an OSError would escape catch_exceptions=False
    assert (result.exit_code, result.stdout) == (1, f"Error: cannot write --dest {dest}: {reason}\n")
    assert_no_leftovers(tmp_path, {"src", "file"})


@pytest.mark.parametrize("dest_name", ["o.zip", "o"])
def test_write_failure_midway_is_reported_and_cleaned_up(tmp_path, monkeypatch, dest_name):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    real_open = open

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if dest_name.endswith(".zip"):
        monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)
    else:
        monkeypatch.setattr(
            "builtins.open",
            lambda path, *a, **k: disk_full() if str(path).endswith("img00000000.png") else real_open(path, *a, **k),
        )
    dest = tmp_path / dest_name
    result = run_tool("--source", tmp_path / "src", "--dest", dest)
    expected = f"Error: cannot write --dest {dest}: {os.strerror(errno.ENOSPC)} (writing 00000/img00000000.png)"
    assert (result.exit_code, result.stdout.strip()) == (1, expected)
    assert_no_leftovers(tmp_path, {"src"})


def test_crop_of_grayscale_and_16bit_images_are_reported(tmp_path):
    save_image(tmp_path / "gray" / "a.png", np.zeros([8, 8], np.uint8))
    args = ["--source", tmp_path / "gray", "--dest", tmp_path / "o.zip", "--transform", "center-crop"]
    result = run_tool(*args, "--width", 4, "--height", 4)
    assert result.exit_code == 1
    expected = "Error: Image 00000/img00000000.png: this transform needs RGB images, got an array of shape [8, 8]"
    assert result.stdout.strip() == expected
    save_image(tmp_path / "deep" / "a.png", np.zeros([8, 8], np.uint16))  # a 16-bit grayscale PNG
    result = run_tool("--source", tmp_path / "deep", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1
    assert result.stdout.strip() == "Error: Image 00000/img00000000.png: expected 8 bits per channel, found uint16"
    assert_no_leftovers(tmp_path, {"gray", "deep"})


def test_mismatched_image_leaves_no_partial_output(tmp_path):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    save_image(tmp_path / "src" / "b.png", np.zeros([8, 8], np.uint8))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "out.zip")
    assert result.exit_code == 1
    assert result.stdout.strip() == (
        "Error: Image 00000/img00000001.png attributes must be equal across all images of the dataset.  Got:\n"
        "  dataset width/cur image width: 4/8\n"
        "  dataset height/cur image height: 4/8\n"
        "  dataset channels/cur image channels: 3/1"
    )
    assert_no_leftovers(tmp_path, {"src"})


def test_unreadable_folder_image_stops_by_default_and_can_be_skipped(tmp_path):
    rng = np.random.default_rng(14)
    good = [random_image(rng, 4, 4) for _ in range(2)]
    save_image(tmp_path / "src" / "a.png", good[0])
    (tmp_path / "src" / "b.png").write_bytes(b"not a png")
    save_image(tmp_path / "src" / "c.png", good[1])

    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"Error: Cannot read source image {tmp_path / 'src' / 'b.png'}: ")
    assert_no_leftovers(tmp_path, {"src"})

    runner = CliRunner()
    args = ["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "out"), "--on-unreadable", "skip"]
    result = runner.invoke(dataset_tool.main, args, catch_exceptions=False)
    assert result.exit_code == 0
    assert f"Warning: skipping unreadable source image {tmp_path / 'src' / 'b.png'}" in result.stderr
    files = read_output(tmp_path / "out")
    assert sorted(files) == ["00000/img00000000.png", "00000/img00000001.png", "dataset.json"]
    np.testing.assert_array_equal(decode(files["00000/img00000001.png"])[0], good[1])


def test_real_command_line(tmp_path):
    save_image(tmp_path / "src" / "a.png", np.full([4, 4, 3], 7, np.uint8))
    cmd = [sys.executable, "dataset_tool.py", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "o.zip")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])[0].tolist() == np.full([4, 4, 3], 7).tolist()
    )
    proc = subprocess.run([sys.executable, "dataset_tool.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "center-crop-wide" in proc.stdout and "dataset.json" in proc.stdout
