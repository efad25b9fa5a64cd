"""torch_utils/images.py: the float-to-uint8 formulas of the tools and the training grids, and PNG modes."""

import numpy as np
import PIL.Image
import pytest
import torch

from torch_utils import images

VALUES = [-1.0, -0.5, 0.0, 0.5, 1.0, -3.0, 3.0, 0.99]


def _tensor(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_generator_formula_rounds_half_up():
    # x * 127.5 + 128, clamped, truncated: -0.5 -> 64.25 -> 64, 0 -> 128, 0.99 -> 254.225 -> 254.
    assert images.generator_to_uint8(_tensor(VALUES)).reshape(-1).tolist() == [0, 64, 128, 191, 255, 0, 255, 254]
    assert images.generator_to_uint8(_tensor(VALUES)).dtype == torch.uint8


def test_projector_formula_truncates_and_differs_by_at_most_one():
    x = _tensor(VALUES)
    expected = (np.array(VALUES, np.float32) + 1) * np.float32(127.5)  # float32 arithmetic, not clamped
    np.testing.assert_array_equal(images.projector_pixels(x).reshape(-1).numpy(), expected)
    projected = images.projector_to_hwc(x).reshape(-1)
    assert projected.tolist() == [0, 63, 127, 191, 255, 0, 255, 253]
    dense = torch.linspace(-1.2, 1.2, 10001).reshape(1, 1, 1, -1)
    diff = images.generator_to_hwc(dense).astype(int) - images.projector_to_hwc(dense).astype(int)
    assert set(np.unique(diff)) == {0, 1}


def test_hwc_layout():
    img = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) / 60 - 1
    hwc = images.generator_to_hwc(img)
    assert hwc.shape == (2, 4, 5, 3) and hwc.dtype == np.uint8
    np.testing.assert_array_equal(hwc, images.generator_to_uint8(img).permute(0, 2, 3, 1).numpy())
    assert images.projector_to_hwc(img).shape == (2, 4, 5, 3)


def test_grid_formula_rounds_half_to_even():
    scaled = np.array([0.5, 1.5, 2.5, -3.0, 300.0]) / 255  # in drange [0, 1]
    assert images.float_to_uint8(scaled, (0, 1)).tolist() == [0, 2, 2, 0, 255]
    assert images.float_to_uint8(np.array([-1.0, 1.0]), (-1, 1)).tolist() == [0, 255]


def test_to_pil_modes_and_channel_errors():
    rgb = np.zeros([2, 3, 3], np.uint8)
    gray = np.full([2, 3, 1], 7, np.uint8)
    assert images.to_pil(rgb).mode == "RGB" and images.to_pil(rgb).size == (3, 2)
    assert images.to_pil(gray).mode == "L" and np.array(images.to_pil(gray)).tolist() == [[7, 7, 7]] * 2
    rgba = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4)
    assert images.to_pil(rgba).mode == "RGBA" and np.array(images.to_pil(rgba)).tolist() == rgba.tolist()
    with pytest.raises(images.ImageChannelsError, match=r"^Cannot save images with 2 channels; expected 1 \(grayscale"):
        images.to_pil(np.zeros([2, 2, 2], np.uint8))
    images.check_channels(3)
    assert isinstance(images.to_pil(rgb), PIL.Image.Image)


def test_open_image_refuses_declared_sizes_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    PIL.Image.new("L", (64, 32)).save(path)
    with images.open_image(path, "big.png") as img:
        assert img.size == (64, 32)
    with pytest.raises(images.ImageFileError, match=r"^big.png: the image declares 64x32 = 2048 pixels; at most 2047"):
        images.open_image(path, "big.png", max_pixels=2047)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(images.ImageFileError, match=r"^junk.png: not an image file that Pillow can read"):
        images.open_image(tmp_path / "junk.png", "junk.png")


def test_open_image_names_missing_files_and_folders(tmp_path):
    for path in [tmp_path / "missing.png", tmp_path]:
        with pytest.raises(images.ImageFileError, match=r"^x.png: cannot be opened \(\[Errno \d+\]"):
            images.open_image(path, "x.png")


def test_save_png_replaces_a_file_only_when_the_new_one_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "seed0000.png"
    images.save_png(np.full([2, 3, 3], 9, np.uint8), str(path))
    before = path.read_bytes()
    with PIL.Image.open(path) as img:
        assert img.mode == "RGB" and np.array(img).tolist() == [[[9] * 3] * 3] * 2

    def torn_write(self, f, format=None):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", torn_write)
    with pytest.raises(OSError, match="No space left"):
        images.save_png(np.zeros([2, 3, 3], np.uint8), str(path))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["seed0000.png"]
