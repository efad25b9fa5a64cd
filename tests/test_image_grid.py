"""training/image_grid.py: grid size, the choice of grid items with and without labels, and the PNG pixel mapping
(docs/compatibility.md, "Training loop")."""

import os

import numpy as np
import PIL.Image
import pytest

import dnnlib
from training import image_grid
from training.dataset import ImageFolderDataset


class FakeDataset:
    """Item i is a constant image of value i (uint8 [C, H, W]); labels are given raw (int64 [N] or float32 [N, D])."""

    def __init__(self, count: int, resolution=(8, 8), channels: int = 3, raw_labels: np.ndarray | None = None):
        self.count = count
        self.image_shape = [channels, *resolution]
        self.raw_labels = raw_labels
        self.has_labels = raw_labels is not None

    def __len__(self):
        return self.count

    def __getitem__(self, idx):
        image = np.full(self.image_shape, idx, dtype=np.uint8)
        if self.raw_labels is None:
            label = np.zeros([0], dtype=np.float32)
        else:
            label = np.asarray(self.raw_labels[idx], dtype=np.float32).reshape(-1)
        return image, label

    def get_details(self, idx):
        return dnnlib.EasyDict(raw_idx=idx, xflip=False, raw_label=np.array(self.raw_labels[idx]).copy())


def documented_labelled_choice(raw_labels, cols: int, rows: int) -> list[int]:
    """The labelled-grid rule of docs/compatibility.md, "Training loop", written out independently of the module."""
    rnd = np.random.RandomState(0)
    groups = {}
    for idx, raw in enumerate(raw_labels):
        key = tuple(np.array(raw).flatten()[::-1].tolist())
        groups.setdefault(key, []).append(idx)
    keys = sorted(groups)
    for key in keys:
        rnd.shuffle(groups[key])
    chosen = []
    for y in range(rows):
        members = groups[keys[y % len(keys)]]
        chosen += [members[x % len(members)] for x in range(cols)]
        groups[keys[y % len(keys)]] = [members[(i + cols) % len(members)] for i in range(len(members))]
    return chosen


@pytest.mark.parametrize(
    "hw, expected",
    [((16, 16), (32, 32)), ((32, 32), (32, 32)), ((256, 256), (30, 16)), ((1024, 1024), (7, 4)),
     ((512, 256), (30, 8)), ((4096, 8192), (7, 4))],
)  # fmt: skip
def test_grid_shape(hw, expected):
    assert image_grid.grid_shape(hw) == expected


def test_unlabelled_selection_is_a_seeded_shuffle_repeated():
    dataset = FakeDataset(count=10, resolution=(256, 256))
    shape, images, labels = image_grid.select_grid_items(dataset)
    assert shape == (30, 16)
    assert images.shape == (480, 3, 256, 256) and images.dtype == np.uint8
    assert labels.shape == (480, 0) and labels.dtype == np.float32
    order = list(range(10))
    np.random.RandomState(0).shuffle(order)
    assert images[:, 0, 0, 0].tolist() == [order[k % 10] for k in range(480)]


def test_int_labels_one_group_per_row_with_rotation():
    raw = np.array([2, 0, 1, 0, 2, 2, 0, 1, 2, 2, 0], dtype=np.int64)
    onehot = np.eye(3, dtype=np.float32)[raw]

    class ClassDataset(FakeDataset):
        def __getitem__(self, idx):
            return np.full(self.image_shape, idx, dtype=np.uint8), onehot[idx].copy()

    dataset = ClassDataset(count=len(raw), resolution=(512, 512), raw_labels=raw)
    (cols, rows), images, labels = image_grid.select_grid_items(dataset)
    assert (cols, rows) == (15, 8)
    chosen = images[:, 0, 0, 0].tolist()
    assert chosen == documented_labelled_choice(raw, cols, rows)
    # Row y holds class y mod 3 only, and the labels are the items' own.
    for y in range(rows):
        assert set(raw[chosen[y * cols : (y + 1) * cols]].tolist()) == {y % 3}
    np.testing.assert_array_equal(labels, onehot[chosen])


def test_vector_labels_are_keyed_on_reversed_elements():
    # Sorted by the reversed tuple: (0, 1) i.e. raw [1, 0] comes before (1, 0) i.e. raw [0, 1].
    raw = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    dataset = FakeDataset(count=5, resolution=(1024, 1024), raw_labels=raw)
    (cols, rows), images, _labels = image_grid.select_grid_items(dataset)
    assert (cols, rows) == (7, 4)
    chosen = images[:, 0, 0, 0].tolist()
    assert chosen == documented_labelled_choice(raw, cols, rows)
    assert set(chosen[:cols]) == {1, 3, 4} and set(chosen[cols : 2 * cols]) == {0, 2}


def test_real_dataset_with_xflip_uses_mirrored_items(tmp_path):
    rng = np.random.default_rng(0)
    for idx in range(3):
        PIL.Image.fromarray(rng.integers(0, 256, size=[16, 16, 3], dtype=np.uint8)).save(tmp_path / f"{idx}.png")
    dataset = ImageFolderDataset(path=str(tmp_path), xflip=True)
    _shape, images, _labels = image_grid.select_grid_items(dataset)
    order = list(range(6))
    np.random.RandomState(0).shuffle(order)
    for k in range(12):
        np.testing.assert_array_equal(images[k], dataset[order[k % 6]][0])
    assert any(index >= 3 for index in order[:6])  # Some tiles are mirrored copies.


def test_png_pixel_mapping_and_layout(tmp_path):
    cols, rows = 3, 2
    values = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=np.float32)  # One value per tile; 2.0 clips.
    images = np.broadcast_to(values[:, None, None, None], [6, 3, 4, 5]).copy()
    images[:, 1] = -images[:, 1]  # Channel 1 is mirrored so channel order is checked too.
    path = tmp_path / "grid.png"
    image_grid.save_image_grid(images, str(path), (-1, 1), (cols, rows))
    with PIL.Image.open(path) as picture:
        assert picture.mode == "RGB" and picture.size == (cols * 5, rows * 4)
        pixels = np.asarray(picture)
    # (x - lo) * 255 / (hi - lo), float32, round half to even: 0.0 -> 127.5 -> 128, -0.5 -> 63.75 -> 64.
    mapped = {-1.0: 0, -0.5: 64, 0.0: 128, 0.5: 191, 1.0: 255, 2.0: 255, -2.0: 0}
    for k, value in enumerate(values.tolist()):
        tile = pixels[(k // cols) * 4 : (k // cols + 1) * 4, (k % cols) * 5 : (k % cols + 1) * 5]
        assert (tile[:, :, 0] == mapped[value]).all() and (tile[:, :, 2] == mapped[value]).all(), k
        assert (tile[:, :, 1] == mapped[-value]).all(), k
    assert not [name for name in os.listdir(tmp_path) if name != "grid.png"]  # The temporary file was renamed.


def test_png_grayscale_and_uint8_range(tmp_path):
    images = np.arange(4 * 1 * 2 * 2, dtype=np.float32).reshape(4, 1, 2, 2) * 20
    path = tmp_path / "gray.png"
    image_grid.save_image_grid(images, str(path), (0, 255), (2, 2))
    with PIL.Image.open(path) as picture:
        assert picture.mode == "L" and picture.size == (4, 4)
        pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[0:2, 2:4], images[1, 0].astype(np.uint8))
    np.testing.assert_array_equal(pixels[2:4, 0:2], images[2, 0].clip(0, 255).astype(np.uint8))
    with pytest.raises(AssertionError, match="1, 3 or 4 channels, got 2"):
        image_grid.save_image_grid(np.zeros([4, 2, 2, 2], dtype=np.float32), str(tmp_path / "bad.png"), (0, 1), (2, 2))
