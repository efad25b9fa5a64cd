"""Conversions between the generator's float images and 8-bit pictures, in one place for every tool.

The generator's range is [-1, 1] (float, `[N, C, H, W]`). Which float-to-uint8 formula a tool uses is part of the
numbers users compare against the reference (FID of generated images, PNG bytes of the tools), so each formula is
kept exactly as docs/compatibility.md, "Tools" lists it:

- `generator_to_uint8`: `x * 127.5 + 128`, clamped to [0, 255], truncated (i.e. round half up). Used by
  `generate.py`, `style_mixing.py` and the metrics.
- `projector_pixels` / `projector_to_hwc`: the projector's formula, `(x + 1) * (255 / 2)` (its LPIPS input, not
  clamped), then clamped to [0, 255] and truncated for `proj.png` and the video. It rounds down where
  `generator_to_uint8` rounds half up, so the two differ by one code value for some pixels (x = 0 gives 127 here,
  128 there).
- `float_to_uint8`: `(x - lo) * (255 / (hi - lo))`, rounded to nearest (half to even), clipped. Used by the
  training image grids (`reals.png`, `fakes*.png`) with the grid's `drange`.
"""

import numpy as np
import PIL.Image
import torch

from dnnlib import atomic

# PIL modes of the channel counts that images can be written with, and how messages call them.
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_CHANNEL_NAMES = {1: "grayscale", 3: "RGB", 4: "RGBA"}

# The most pixels an image file may declare before it is decoded (8192 x 8192): a few bytes of header can otherwise
# ask for gigabytes. Below Pillow's own decompression-bomb warning, so that this check speaks first.
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageChannelsError(ValueError):
    """An image whose channel count has no PNG mode."""


class ImageFileError(ValueError):
    """An image file that cannot be opened, or that declares more pixels than MAX_IMAGE_PIXELS."""


def generator_to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Generator output `[N, C, H, W]` in [-1, 1] -> uint8 `[N, C, H, W]` on the same device."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def generator_to_hwc(img: torch.Tensor) -> np.ndarray:
    """Generator output `[N, C, H, W]` -> uint8 NumPy `[N, H, W, C]` on the CPU, ready for `to_pil`."""
    return generator_to_uint8(img).permute(0, 2, 3, 1).cpu().numpy()


def projector_pixels(img: torch.Tensor) -> torch.Tensor:
    """Generator output `[N, C, H, W]` -> float pixel values `[N, C, H, W]`, `(x + 1) * (255 / 2)`, not clamped."""
    return (img + 1) * (255 / 2)


def projector_to_hwc(img: torch.Tensor) -> np.ndarray:
    """Generator output `[N, C, H, W]` -> uint8 NumPy `[N, H, W, C]` on the CPU: `projector_pixels`, clamp, truncate."""
    return projector_pixels(img).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def float_to_uint8(img: np.ndarray, drange: tuple[float, float]) -> np.ndarray:
    """Float array with values in `drange` -> uint8 array of the same shape (round to nearest, clip)."""
    lo, hi = drange
    scaled = (np.asarray(img, dtype=np.float32) - lo) * (255 / (hi - lo))
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def check_channels(channels: int) -> None:
    """Raise `ImageChannelsError` unless images of `channels` channels can be written as PNG."""
    if channels not in PIL_MODES:
        names = [f"{count} ({name})" for count, name in _CHANNEL_NAMES.items()]
        expected = ", ".join(names[:-1]) + " or " + names[-1]
        raise ImageChannelsError(f"Cannot save images with {channels} channels; expected {expected}")


def to_pil(image: np.ndarray) -> PIL.Image.Image:
    """uint8 `[H, W, C]` -> PIL image of the matching mode (1 channel: L, 3: RGB, 4: RGBA)."""
    channels = image.shape[2]
    check_channels(channels)
    return PIL.Image.fromarray(image[:, :, 0] if channels == 1 else image, PIL_MODES[channels])


def save_png(image: np.ndarray | PIL.Image.Image, path: str) -> None:
    """uint8 `[H, W, C]` (or a PIL image) -> PNG file at `path`, atomically: a kill never leaves a torn file there."""
    picture = image if isinstance(image, PIL.Image.Image) else to_pil(image)
    atomic.atomic_write(path, lambda f: picture.save(f, format="png"))


def open_image(file, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """Open an image (path or binary file object) lazily, refusing it before decoding if it declares too many pixels.

    `name` is how messages call the file (its path, or `archive.zip:member.png`). Errors are one-line
    `ImageFileError`s; the pixels are decoded only when the caller uses the image.
    """
    try:
        image = PIL.Image.open(file)
    except PIL.Image.DecompressionBombError as exc:
        raise ImageFileError(f"{name}: the image declares more than {max_pixels} pixels ({exc})") from exc
    except OSError as exc:
        if exc.errno is None:  # Pillow's UnidentifiedImageError and decoder errors carry no errno
            raise ImageFileError(f"{name}: not an image file that Pillow can read ({exc})") from exc
        raise ImageFileError(f"{name}: cannot be opened ({exc})") from exc
    except (SyntaxError, ValueError) as exc:
        raise ImageFileError(f"{name}: not an image file that Pillow can read ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageFileError(
            f"{name}: the image declares {width}x{height} = {width * height} pixels; at most {max_pixels} are accepted"
        )
    return image
