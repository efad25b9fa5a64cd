"""dataset_tool.py: guards of issue 12 (hidden entries, staging leftovers of killed runs, size and label limits) and the
features of issues 14 and 15 (--subfolders-as-labels, RGBA and --channels, non-square --width/--height)."""

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT
from test_dataset_guards import _declare_member_size, _png_header_only
from test_dataset_tool import assert_no_leftovers, decode, random_image, read_output, run_tool, save_image

import dataset_tool
import train
from training.dataset import ImageFolderDataset

fcntl = pytest.importorskip("fcntl")  # the staging locks are POSIX flock locks

# ----------------------------------------------------------------------------------------------------------------------
# Hidden entries.


def test_hidden_source_entries_are_skipped(tmp_path):
    rng = np.random.default_rng(1)
    good = random_image(rng, 4, 4)
    save_image(tmp_path / "src" / "a.png", good)
    for hidden in [".b.png", ".cache/c.png", "sub/._a.png"]:
        save_image(tmp_path / "src" / hidden, random_image(rng, 8, 8))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 0, result.stdout
    assert sorted(read_output(tmp_path / "o.zip")) == ["00000/img00000000.png", "dataset.json"]

    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        z.write(tmp_path / "src" / "a.png", "a.png")
        z.write(tmp_path / "src" / "sub" / "._a.png", "__MACOSX/._a.png")
    assert run_tool("--source", tmp_path / "src.zip", "--dest", tmp_path / "z.zip").exit_code == 0
    assert len(read_output(tmp_path / "z.zip")) == 2


# ----------------------------------------------------------------------------------------------------------------------
# Staging leftovers of killed runs.

KILL_AFTER_FIRST_IMAGE = """
import os, signal, sys
import dataset_tool
real_save = dataset_tool.StagedDestination.save
def save(self, name, data):
    real_save(self, name, data)
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the conversion, no clean-up runs
dataset_tool.StagedDestination.save = save
dataset_tool.main(sys.argv[1:])
"""


def _killed_run(*args):
    cmd = [sys.executable, "-c", KILL_AFTER_FIRST_IMAGE, *[str(a) for a in args]]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr


def test_killed_run_inside_empty_folder_is_recognised_and_removed(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(2):
        save_image(tmp_path / "src" / f"{i}.png", random_image(rng, 4, 4))
    dest = tmp_path / "dest"
    dest.mkdir()
    _killed_run("--source", tmp_path / "src", "--dest", dest)
    (leftover,) = os.listdir(dest)  # `ls` shows nothing: the staging folder is hidden
    assert leftover.startswith(".dataset_tool.") and leftover.endswith(".tmp")

    # The reader refuses the partial dataset, naming the leftover ...
    with pytest.raises(OSError, match=rf"'{dest / leftover}' is the hidden staging folder of a dataset_tool\.py run"):
        ImageFolderDataset(str(dest))
    # train.py --data says so in one line before anything starts.
    result = CliRunner().invoke(train.main, [f"--outdir={tmp_path / 'runs'}", f"--data={dest}", "--dry-run"])
    assert result.exit_code == 2 and f"--data: '{dest / leftover}' is the hidden staging folder" in result.output
    assert "Traceback" not in result.output
    # ... and a rerun removes it (its run is gone) instead of saying that the folder is not empty.
    result = run_tool("--source", tmp_path / "src", "--dest", dest)
    assert result.exit_code == 0, result.stdout
    assert f"Note: removed {dest / leftover}, left by a dataset_tool.py run that did not finish" in result.stderr
    assert_no_leftovers(dest, {"00000", "dataset.json"})
    assert len(ImageFolderDataset(str(dest))) == 2


@pytest.mark.parametrize("dest_name", ["out.zip", "out"])
def test_killed_run_beside_dest_is_removed_by_the_next_run(tmp_path, dest_name):
    save_image(tmp_path / "src" / "a.png", random_image(np.random.default_rng(3), 4, 4))
    (tmp_path / "work").mkdir()
    dest = tmp_path / "work" / dest_name
    _killed_run("--source", tmp_path / "src", "--dest", dest)
    (leftover,) = os.listdir(tmp_path / "work")
    assert leftover.startswith(f".{dest_name}.") and leftover.endswith(".tmp")
    with pytest.raises(OSError, match=rf"does not exist \(found '.*{leftover}' beside it, left by a dataset_tool"):
        ImageFolderDataset(str(dest))
    result = run_tool("--source", tmp_path / "src", "--dest", dest)
    assert result.exit_code == 0 and "Note: removed" in result.stderr
    assert_no_leftovers(tmp_path / "work", {dest_name})


def _hold_lock(path):
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_staging_folder_of_a_running_conversion_is_named_not_removed(tmp_path):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    dest = tmp_path / "dest"
    staging = dest / ".dataset_tool.abc123.tmp"
    staging.mkdir(parents=True)
    fd = _hold_lock(staging)  # as the running conversion does
    try:
        result = run_tool("--source", tmp_path / "src", "--dest", dest)
        assert result.exit_code == 1
        assert result.stdout.strip() == (
            f"Error: --dest folder {dest} holds {staging}, the hidden staging folder of a dataset_tool.py run that "
            "may still be running; wait for it, or remove that folder if no such run is left"
        )
        assert staging.is_dir()
        other = tmp_path / ".o.zip.xyz.tmp"
        other.write_bytes(b"being written")
        fd2 = _hold_lock(other)
        result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
        assert result.exit_code == 0 and other.exists()
        assert f"Warning: {other} is the staging entry of another dataset_tool.py run writing" in result.stderr
        os.close(fd2)
    finally:
        os.close(fd)


def test_staging_entry_is_locked_while_the_conversion_runs(tmp_path, monkeypatch):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    seen = []
    real_save = dataset_tool.StagedDestination.save

    def save(self, name, data):
        seen.append(dataset_tool._owner_is_gone(self.temp))
        real_save(self, name, data)

    monkeypatch.setattr(dataset_tool.StagedDestination, "save", save)
    for dest in ["o.zip", "o", "empty"]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert run_tool("--source", tmp_path / "src", "--dest", tmp_path / dest).exit_code == 0
    assert seen and not any(seen)


# ----------------------------------------------------------------------------------------------------------------------
# Size and label limits.


def test_zip_member_declaring_gigabytes_is_refused_before_reading(tmp_path, monkeypatch):
    source = tmp_path / "bomb.zip"
    buf = io.BytesIO()
    PIL.Image.fromarray(np.zeros([4, 4, 3], np.uint8)).save(buf, format="png")
    with zipfile.ZipFile(source, "w") as z:
        z.writestr("a.png", buf.getvalue())
    _declare_member_size(source, "a.png", 2 << 30)
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *args: pytest.fail("read a member declaring 2 GiB"))
    result = run_tool("--source", source, "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1
    assert result.stdout.strip() == (
        f"Error: Cannot read source image {source}/a.png: it holds 2147483648 bytes (uncompressed), more than the "
        "536870912 accepted (MAX_IMAGE_FILE_BYTES)"
    )


def test_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(_png_header_only(60000, 60000))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"Error: Cannot read source image {tmp_path / 'src' / 'a.png'}: the image declares")
    assert "\n" not in result.stdout.strip()


@pytest.mark.parametrize(
    "label, message",
    [
        (20000000, r"must be a class index 0\.\.99999, found 20000000 \(above the limit"),
        (2**64, r"must be a class index 0\.\.99999, found 18446744073709551616"),
        ([1.0, float("nan")], r"must be a vector of finite float32 numbers, found \[1\.0, NaN\] \(entry 1 is not"),
        ([float("-inf")], r"must be a vector of finite float32 numbers, found \[-Infinity\]"),
    ],
)
def test_bad_source_labels_name_the_file(tmp_path, label, message):
    save_image(tmp_path / "src" / "a.png", np.zeros([4, 4, 3], np.uint8))
    labels_file = tmp_path / "src" / "dataset.json"
    labels_file.write_text(json.dumps({"labels": [["a.png", label]]}))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 1
    assert re.match(rf"^Error: {re.escape(str(labels_file))}: label of 'a\.png' {message}", result.stdout)
    assert_no_leftovers(tmp_path, {"src"})


# ----------------------------------------------------------------------------------------------------------------------
# --subfolders-as-labels (issue 14.1).


def _class_folders(root, rng, counts):
    images = {}
    for cls, count in counts.items():
        for i in range(count):
            images[f"{cls}/{i}.png"] = random_image(rng, 4, 4)
            save_image(root / cls / f"{i}.png", images[f"{cls}/{i}.png"])
    return images


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_subfolders_as_labels(tmp_path, kind):
    rng = np.random.default_rng(4)
    images = _class_folders(tmp_path / "src", rng, {"dogs": 2, "cats": 1, "birds": 1})
    save_image(tmp_path / "src" / "dogs" / "deeper" / "x.png", random_image(rng, 4, 4))  # deeper: still a dog
    save_image(tmp_path / "src" / ".hidden" / "y.png", random_image(rng, 4, 4))  # never a class
    source = tmp_path / "src"
    if kind == "zip":
        source = tmp_path / "src.zip"
        with zipfile.ZipFile(source, "w") as z:
            for path in sorted((tmp_path / "src").rglob("*.png")):
                z.write(path, path.relative_to(tmp_path / "src").as_posix())
    result = run_tool("--source", source, "--dest", tmp_path / "o.zip", "--subfolders-as-labels")
    assert result.exit_code == 0, result.stdout
    doc = json.loads(read_output(tmp_path / "o.zip")["dataset.json"])
    assert doc["class_names"] == ["birds", "cats", "dogs"]
    assert [label for _name, label in doc["labels"]] == [0, 1, 2, 2, 2]  # birds/0, cats/0, dogs/0, dogs/1, dogs/deeper
    ds = ImageFolderDataset(str(tmp_path / "o.zip"), use_labels=True)
    assert ds.class_names == ["birds", "cats", "dogs"] and ds.label_dim == 3
    np.testing.assert_array_equal(ds[1][0], images["cats/0.png"].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds[1][1], [0, 1, 0])


def test_subfolders_as_labels_errors(tmp_path):
    rng = np.random.default_rng(5)
    _class_folders(tmp_path / "src", rng, {"a": 1})
    save_image(tmp_path / "src" / "loose.png", random_image(rng, 4, 4))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--subfolders-as-labels")
    assert result.stdout.strip() == (
        f"Error: --subfolders-as-labels: {tmp_path / 'src'}/loose.png is not inside a class subfolder; every image "
        "must lie in a subfolder of --source named after its class"
    )
    os.remove(tmp_path / "src" / "loose.png")
    (tmp_path / "src" / "dataset.json").write_text(json.dumps({"labels": [["a/0.png", 0]]}))
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--subfolders-as-labels")
    assert result.stdout.strip().endswith("dataset.json already holds labels; use one or the other")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    result = run_tool(
        "--source", tmp_path / "cifar-10-python.tar.gz", "--dest", tmp_path / "o.zip", "--subfolders-as-labels"
    )
    assert result.stdout.startswith("Error: --subfolders-as-labels needs a folder or zip of images as --source")
    assert_no_leftovers(tmp_path, {"src", "cifar-10-python.tar.gz"})


# ----------------------------------------------------------------------------------------------------------------------
# RGBA and --channels (issue 14.2).


def _rgba(rng, height, width):
    image = random_image(rng, height, width, 4)
    image[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # alpha varies
    return image


def test_rgba_is_kept_and_read_back(tmp_path):
    rng = np.random.default_rng(6)
    images = [_rgba(rng, 8, 8) for _ in range(2)]
    for i, image in enumerate(images):
        save_image(tmp_path / "src" / f"{i}.png", image)
    result = run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert result.exit_code == 0, result.stdout
    pixels, mode = decode(read_output(tmp_path / "o.zip")["00000/img00000001.png"])
    assert mode == "RGBA"
    np.testing.assert_array_equal(pixels, images[1])
    ds = ImageFolderDataset(str(tmp_path / "o.zip"))
    assert ds.num_channels == 4
    np.testing.assert_array_equal(ds[0][0], images[0].transpose(2, 0, 1))


def test_channels_option_converts(tmp_path):
    rng = np.random.default_rng(7)
    rgba = _rgba(rng, 4, 4)
    save_image(tmp_path / "src" / "a.png", rgba)
    over_black = ((rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    expected = {
        "3": (over_black, "RGB"),
        "1": (np.array(PIL.Image.fromarray(over_black).convert("L")), "L"),
        "4": (rgba, "RGBA"),
    }
    for channels, (pixels, mode) in expected.items():
        dest = tmp_path / f"o{channels}.zip"
        assert run_tool("--source", tmp_path / "src", "--dest", dest, "--channels", channels).exit_code == 0
        got, got_mode = decode(read_output(dest)["00000/img00000000.png"])
        assert got_mode == mode
        np.testing.assert_array_equal(got, pixels)
    gray = random_image(rng, 4, 4, 1)
    save_image(tmp_path / "gray" / "a.png", gray)
    assert run_tool("--source", tmp_path / "gray", "--dest", tmp_path / "g.zip", "--channels", "4").exit_code == 0
    got, mode = decode(read_output(tmp_path / "g.zip")["00000/img00000000.png"])
    assert mode == "RGBA"
    np.testing.assert_array_equal(got, np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=2))


def test_gray_alpha_becomes_rgba(tmp_path):
    pixels = random_image(np.random.default_rng(8), 4, 4, 2)
    (tmp_path / "src").mkdir()
    PIL.Image.fromarray(pixels, "LA").save(tmp_path / "src" / "a.png")
    assert run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip").exit_code == 0
    got, mode = decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])
    assert mode == "RGBA"
    np.testing.assert_array_equal(got, pixels[..., [0, 0, 0, 1]])


def test_rgba_crops_and_letterbox_keep_alpha(tmp_path):
    rng = np.random.default_rng(9)
    save_image(tmp_path / "src" / "a.png", _rgba(rng, 16, 32))
    args = ["--source", tmp_path / "src", "--width", 16, "--height", 8]
    assert run_tool(*args, "--dest", tmp_path / "w.zip", "--transform", "center-crop-wide").exit_code == 0
    got, mode = decode(read_output(tmp_path / "w.zip")["00000/img00000000.png"])
    assert mode == "RGBA" and got.shape == (16, 16, 4)
    assert (got[:4] == 0).all() and (got[12:] == 0).all()  # transparent black bars
    assert run_tool(*args, "--dest", tmp_path / "c.zip", "--transform", "center-crop").exit_code == 0
    got, mode = decode(read_output(tmp_path / "c.zip")["00000/img00000000.png"])
    assert mode == "RGBA" and got.shape == (8, 16, 4)


def test_cmyk_becomes_rgb(tmp_path):
    (tmp_path / "src").mkdir()
    image = PIL.Image.fromarray(random_image(np.random.default_rng(10), 4, 4)).convert("CMYK")
    image.save(tmp_path / "src" / "a.tif")
    assert run_tool("--source", tmp_path / "src", "--dest", tmp_path / "o.zip").exit_code == 0
    got, mode = decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])
    assert mode == "RGB"
    np.testing.assert_array_equal(got, np.array(image.convert("RGB")))


# ----------------------------------------------------------------------------------------------------------------------
# Non-square datasets (issue 15).


@pytest.mark.parametrize("width, height", [(64, 32), (32, 64), (64, 16)])
def test_center_crop_to_non_square(tmp_path, width, height):
    rng = np.random.default_rng(11)
    source = random_image(rng, 50, 70)
    save_image(tmp_path / "src" / "a.png", source)
    args = ["--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--transform", "center-crop"]
    result = run_tool(*args, "--width", width, "--height", height)
    assert result.exit_code == 0, result.stdout
    got, _ = decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])
    assert got.shape == (height, width, 3)
    # The largest centred crop of the output's aspect ratio, then one resize.
    if width * 50 > 70 * height:
        crop_h, crop_w = min(50, round(70 * height / width)), 70
    else:
        crop_h, crop_w = 50, min(70, round(50 * width / height))
    top, left = (50 - crop_h) // 2, (70 - crop_w) // 2
    crop = PIL.Image.fromarray(source[top : top + crop_h, left : left + crop_w])
    np.testing.assert_array_equal(got, np.array(crop.resize((width, height), PIL.Image.LANCZOS)))
    ds = ImageFolderDataset(str(tmp_path / "o.zip"))
    assert (ds.width, ds.height, ds.resolution) == (width, height, max(width, height))


def test_square_center_crop_is_unchanged(tmp_path):
    """W == H crops the largest centred square, as the reference."""
    source = random_image(np.random.default_rng(12), 10, 15)
    save_image(tmp_path / "src" / "a.png", source)
    args = ["--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--transform", "center-crop"]
    assert run_tool(*args, "--width", 8, "--height", 8).exit_code == 0
    got, _ = decode(read_output(tmp_path / "o.zip")["00000/img00000000.png"])
    expected = PIL.Image.fromarray(source[0:10, 2:12]).resize((8, 8), PIL.Image.LANCZOS)
    np.testing.assert_array_equal(got, np.array(expected))
