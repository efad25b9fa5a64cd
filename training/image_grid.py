"""The image grids of a training run: `reals.png`, `fakes_init.png`, `fakes<NNNNNN>.png`.

Which items a grid shows, its size and its pixels are fixed by docs/compatibility.md, "Training loop".
"""

import io

import numpy as np

from dnnlib.atomic import atomic_write_bytes
from torch_utils.images import PIL_MODES, float_to_uint8, to_pil

# The grid fills roughly an 8K canvas, within these tile-count bounds.
GRID_CANVAS = (7680, 4320)
GRID_COLS = (7, 32)
GRID_ROWS = (4, 32)


def grid_shape(resolution_hw: tuple[int, int]) -> tuple[int, int]:
    """(columns, rows) of the grid for images of the given (height, width)."""
    height, width = resolution_hw
    cols = int(np.clip(GRID_CANVAS[0] // width, *GRID_COLS))
    rows = int(np.clip(GRID_CANVAS[1] // height, *GRID_ROWS))
    return cols, rows


def select_grid_items(dataset, seed: int = 0) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Pick the dataset items shown in the grid.

    Unlabelled data: a seeded shuffle of all items, repeated as needed. Labelled data: one label per row (labels
    in sorted order, cycling), each row filled from that label's own shuffled list, which is rotated after use.
    Returns ((cols, rows), images uint8 [cols*rows, C, H, W], labels float32 [cols*rows, label_dim]).
    """
    rnd = np.random.RandomState(seed)
    cols, rows = grid_shape(dataset.image_shape[1:])
    count = cols * rows

    if not dataset.has_labels:
        pool = list(range(len(dataset)))
        rnd.shuffle(pool)
        chosen = [pool[k % len(pool)] for k in range(count)]
    else:
        by_label: dict[tuple, list[int]] = {}
        for idx in range(len(dataset)):
            key = tuple(dataset.get_details(idx).raw_label.flat[::-1])
            by_label.setdefault(key, []).append(idx)
        keys = sorted(by_label)
        for key in keys:
            rnd.shuffle(by_label[key])
        chosen = []
        for row in range(rows):
            key = keys[row % len(keys)]
            members = by_label[key]
            chosen.extend(members[col % len(members)] for col in range(cols))
            by_label[key] = [members[(i + cols) % len(members)] for i in range(len(members))]

    items = [dataset[idx] for idx in chosen]
    images = np.stack([image for image, _label in items])
    labels = np.stack([label for _image, label in items])
    return (cols, rows), images, labels


def grid_to_array(images: np.ndarray, value_range: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Tile [cols*rows, C, H, W] images into one uint8 [rows*H, cols*W, C] array, mapping value_range to 0..255."""
    pixels = float_to_uint8(images, value_range)
    cols, rows = shape
    _n, channels, height, width = pixels.shape
    assert channels in PIL_MODES, f"an image grid needs 1, 3 or 4 channels, got {channels}"
    tiled = pixels.reshape(rows, cols, channels, height, width).transpose(0, 3, 1, 4, 2)
    return tiled.reshape(rows * height, cols * width, channels)


def save_image_grid(images: np.ndarray, path: str, value_range: tuple[float, float], shape: tuple[int, int]) -> None:
    """Write the tiled grid as a PNG (grayscale for 1 channel, RGB for 3, RGBA for 4), atomically: a crash leaves no
    torn file."""
    array = grid_to_array(images, value_range, shape)
    picture = to_pil(array)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
