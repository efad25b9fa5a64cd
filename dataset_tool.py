"""Convert an image collection into the archive layout read by `training.dataset.ImageFolderDataset`.

Sources: an image folder (searched recursively), a zip of images, an LSUN LMDB directory, the CIFAR-10 python
tarball or the MNIST training images. The result is a folder or an uncompressed zip holding
`NNNNN/imgNNNNNNNN.png` files plus `dataset.json` with the labels.
"""

import contextlib
import functools
import gzip
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import typing
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

from torch_utils import images as image_utils
from training.dataset import (
    CLASS_NAMES_KEY,
    MAX_CLASSES,
    MAX_IMAGE_FILE_BYTES,
    MAX_LABELS_FILE_BYTES,
    STAGING_PREFIX,
    STAGING_SUFFIX,
    class_index_problem,
    image_sides_problem,
    is_staging_leftover,
    vector_label_problem,
)

try:
    import fcntl  # Locks that tell a running conversion's staging folder from a leftover (POSIX only).
except ImportError:
    fcntl = None

# ----------------------------------------------------------------------------------------------------------------------

IMAGES_PER_SUBFOLDER_DIGITS = 5  # the first 5 of 8 index digits name the sub-folder, i.e. 1000 images per folder
LABELS_FILE = "dataset.json"
RESIZE_FILTERS = {"box": PIL.Image.BOX, "lanczos": PIL.Image.LANCZOS}

CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_TRAIN_BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
CIFAR10_NUM_IMAGES = 50000
CIFAR10_NUM_CLASSES = 10

MNIST_IMAGES_NAME = "train-images-idx3-ubyte.gz"
MNIST_IMAGES_SUFFIX = "-images-idx3-ubyte.gz"
MNIST_LABELS_SUFFIX = "-labels-idx1-ubyte.gz"
MNIST_IMAGES_HEADER_BYTES = 16
MNIST_LABELS_HEADER_BYTES = 8
MNIST_NUM_IMAGES = 60000
MNIST_NUM_CLASSES = 10
MNIST_SIZE = 28
MNIST_PAD = 2  # 28x28 digits are zero-padded to a power-of-two 32x32

ON_UNREADABLE_CHOICES = ["stop", "skip"]
PALETTE_MODES = ("P", "PA")
CONVERTED_MODES = {"CMYK": "RGB"}  # Modes whose stored channels are no RGB(A) values: converted when decoded.
OUTPUT_CHANNELS = (1, 3, 4)  # grayscale, RGB or RGBA: what the written PNGs and the training code accept
CHANNEL_NAMES = {1: "grayscale", 3: "RGB", 4: "RGBA"}


class DatasetToolError(Exception):
    """A user-facing failure; the CLI prints it as `Error: <message>` and exits with status 1."""


def error(msg: str) -> NoReturn:
    raise DatasetToolError(msg)


class UnreadableImageError(Exception):
    """A source item that could not be decoded; carries the item's path or key for the report."""

    def __init__(self, where: str, cause: BaseException):
        text = str(cause)
        self.where = where
        self.cause = text[len(where) + 2 :] if text.startswith(where + ": ") else text  # said once is enough
        super().__init__(f"{where}: {self.cause}")


# ----------------------------------------------------------------------------------------------------------------------
# Sources. Each opener returns (count, items, label_info): `items` yields (uint8 image array, label or None, source
# name for messages) lazily; `label_info` (_LabelInfo) says whether the source provides labels at all, and their class
# names.


def _has_image_ext(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return False
    return "." + base.rsplit(".", 1)[-1].lower() in PIL.Image.EXTENSION


def _decode_with_pil(data_or_path, name: str = "", keep_palette_alpha: bool = False) -> np.ndarray:
    """Decode: L -> [H, W], LA -> [H, W, 2], RGB -> [H, W, 3], RGBA -> [H, W, 4] as stored; palette (P, PA) -> RGB
    [H, W, 3], or RGBA with `keep_palette_alpha`; CMYK -> RGB.

    Palette images are expanded to their colours because their raw index values are not pixel intensities; every
    other mode is kept as stored. The declared pixel count is checked before decoding (`images.open_image`).
    """
    with image_utils.open_image(data_or_path, name or str(data_or_path)) as img:
        if img.mode in PALETTE_MODES:
            return np.array(img.convert("RGBA" if keep_palette_alpha else "RGB"))
        if img.mode in CONVERTED_MODES:
            return np.array(img.convert(CONVERTED_MODES[img.mode]))
        return np.array(img)


def _check_source_size(size: int, limit: int, limit_name: str):
    """Refuse a file (a zip member: by its declared size) before reading it; zip bombs declare gigabytes."""
    if size > limit:
        raise ValueError(f"it holds {size} bytes (uncompressed), more than the {limit} accepted ({limit_name})")


class _LabelInfo(typing.NamedTuple):
    """What a source says about its labels: whether it has any, and the class names (None when it has none)."""

    has_labels: bool
    class_names: list | None = None


def _parse_labels_json(text: bytes | str, where: str) -> tuple[dict | None, list | None]:
    """Read a source `dataset.json`: ({relative name: label} or None when "labels" is null, class names or None).

    Labels are copied to the output as they are, except that numbers must be class indices 0 .. MAX_CLASSES - 1 and
    lists of numbers finite float32 values (what `training.dataset` accepts); anything else is an error naming the file.
    """
    try:
        doc = json.loads(text)
        labels = doc["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        error(f'{where}: expected a JSON object with a "labels" entry ({exc})')
    class_names = doc.get(CLASS_NAMES_KEY)
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(n, str) for n in class_names)):
        error(f'{where}: expected "{CLASS_NAMES_KEY}" to be a list of strings')
    if labels is None:
        return None, class_names
    try:
        table = {str(name): label for name, label in labels}
    except (TypeError, ValueError):
        error(f'{where}: "labels" must be null or a list of [file name, label] pairs')
    for name, label in table.items():
        _check_label(label, f"{where}: label of '{name}'")
    return table, class_names


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_label(label, what: str):
    if _is_number(label):
        problem = class_index_problem(label)
        if problem is not None:
            error(f"{what} must be a class index 0..{MAX_CLASSES - 1}, found {_short(label)} ({problem})")
    elif isinstance(label, list) and all(_is_number(x) for x in label):
        problem = vector_label_problem(label)
        if problem is not None:
            error(f"{what} must be a vector of finite float32 numbers, found {_short(label)} ({problem})")


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_hidden(relative_name: str) -> bool:
    """Hidden entries (a component starting with '.') are never images of a dataset (.DS_Store, ._x.png, staging)."""
    return any(part.startswith(".") for part in relative_name.split("/"))


def _folder_labels(rel_names: list[str], source: str) -> tuple[dict, list[str]]:
    """--subfolders-as-labels: {relative name: class index} and the sorted class names (first path components)."""
    at_root = [name for name in rel_names if "/" not in name]
    if at_root:
        error(
            f"--subfolders-as-labels: {source}/{at_root[0]} is not inside a class subfolder; every image must lie "
            "in a subfolder of --source named after its class"
        )
    class_names = sorted({name.split("/", 1)[0] for name in rel_names})
    if len(class_names) > MAX_CLASSES:
        error(f"--subfolders-as-labels: {source} has {len(class_names)} subfolders; at most {MAX_CLASSES} classes")
    index = {name: i for i, name in enumerate(class_names)}
    return {rel: index[rel.split("/", 1)[0]] for rel in rel_names}, class_names


def _source_labels(rel_names, labels_file, read_labels, source, subfolders_as_labels):
    """(labels table or None, class names or None) from the source's dataset.json or its subfolders."""
    labels, class_names = None, None
    if labels_file:
        labels, class_names = _parse_labels_json(read_labels(), labels_file)
    if subfolders_as_labels:
        if labels is not None:
            error(f"--subfolders-as-labels: {labels_file} already holds labels; use one or the other")
        labels, class_names = _folder_labels(rel_names, source)
    return labels, class_names


def _limited(count: int, decode_items: Iterator, on_unreadable: str) -> Iterator:
    """Yield decoded items until the one with input index `count - 1` has been yielded.

    Unreadable items consume an input index but are never yielded, so with `skip` the iteration continues past
    the limit until one item succeeds there (the reference behaviour for LSUN).
    """
    for idx, item in enumerate(decode_items):
        try:
            image, label, name = item()
        except UnreadableImageError as exc:
            if on_unreadable == "stop":
                error(f"Cannot read source image {exc.where}: {exc.cause}")
            tqdm.write(f"Warning: skipping unreadable source image {exc.where}: {exc.cause}", file=sys.stderr)
            continue
        yield image, label, name
        if idx >= count - 1:
            break


def _count(total: int, max_images: int | None) -> int:
    return total if max_images is None else min(total, max_images)


def open_image_folder(source_dir: str, *, max_images: int | None, on_unreadable: str, **options):
    paths = sorted(
        p
        for p in Path(source_dir).rglob("*")
        if _has_image_ext(p.name) and not _is_hidden(p.relative_to(source_dir).as_posix()) and p.is_file()
    )
    rel_names = [p.relative_to(source_dir).as_posix() for p in paths]
    labels_path = os.path.join(source_dir, LABELS_FILE)

    def read_labels():
        with open(labels_path, "rb") as f:
            try:
                _check_source_size(os.fstat(f.fileno()).st_size, MAX_LABELS_FILE_BYTES, "MAX_LABELS_FILE_BYTES")
            except ValueError as exc:
                error(f"Cannot read {labels_path}: {exc}")
            return f.read()

    labels, class_names = _source_labels(
        rel_names, os.path.isfile(labels_path) and labels_path, read_labels, source_dir, options["subfolders_as_labels"]
    )

    def make_item(path: Path, rel: str):
        def item():
            try:
                _check_source_size(path.stat().st_size, MAX_IMAGE_FILE_BYTES, "MAX_IMAGE_FILE_BYTES")
                image = _decode_with_pil(path, str(path), options["keep_palette_alpha"])
            except Exception as exc:
                raise UnreadableImageError(str(path), exc) from exc
            return image, None if labels is None else labels.get(rel), rel

        return item

    count = _count(len(paths), max_images)
    items = _limited(count, map(make_item, paths, rel_names), on_unreadable)
    return count, items, _LabelInfo(labels is not None, class_names)


def open_image_zip(source: str, *, max_images: int | None, on_unreadable: str, **options):
    try:
        archive = zipfile.ZipFile(source, mode="r")
    except (OSError, zipfile.BadZipFile) as exc:
        error(f"Cannot open source zip {source}: {exc}")
    members = sorted(name for name in archive.namelist() if _has_image_ext(name) and not _is_hidden(name))

    def read_member(name: str, limit: int, limit_name: str) -> bytes:
        _check_source_size(archive.getinfo(name).file_size, limit, limit_name)
        return archive.read(name)  # never more than the declared size

    def read_labels():
        try:
            return read_member(LABELS_FILE, MAX_LABELS_FILE_BYTES, "MAX_LABELS_FILE_BYTES")
        except ValueError as exc:
            error(f"Cannot read {source}/{LABELS_FILE}: {exc}")

    has_labels_file = LABELS_FILE in archive.namelist() and f"{source}/{LABELS_FILE}"
    labels, class_names = _source_labels(members, has_labels_file, read_labels, source, options["subfolders_as_labels"])

    def make_item(name: str):
        def item():
            where = f"{source}/{name}"
            try:
                data = read_member(name, MAX_IMAGE_FILE_BYTES, "MAX_IMAGE_FILE_BYTES")
                image = _decode_with_pil(io.BytesIO(data), where, options["keep_palette_alpha"])
            except Exception as exc:
                raise UnreadableImageError(where, exc) from exc
            return image, None if labels is None else labels.get(name), name

        return item

    def items():
        with archive:
            yield from _limited(count, map(make_item, members), on_unreadable)

    count = _count(len(members), max_images)
    return count, items(), _LabelInfo(labels is not None, class_names)


def _import_lmdb():
    try:
        import lmdb
    except ImportError:
        error("reading an LSUN LMDB source needs the lmdb package: pip install lmdb")
    return lmdb


def _import_cv2():
    """OpenCV decodes LSUN entries in the reference; without it Pillow stands in (see `open_lmdb`)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _decode_lsun_value(value: bytes, cv2) -> np.ndarray:
    if cv2 is not None:
        image = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is not None:
            return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB
        return _decode_with_pil(io.BytesIO(value), "the LMDB entry")
    # Stand-in for OpenCV's forced 3-channel colour decoding.
    with PIL.Image.open(io.BytesIO(value)) as img:
        return np.array(img.convert("RGB"))


def open_lmdb(source_dir: str, *, max_images: int | None, on_unreadable: str, **options):
    lmdb = _import_lmdb()
    cv2 = _import_cv2()
    if cv2 is None:
        print(
            "Warning: opencv-python is not installed; decoding LSUN entries with Pillow instead "
            "(pip install opencv-python for the reference decoder)",
            file=sys.stderr,
        )
    try:
        env = lmdb.open(source_dir, readonly=True, lock=False)
    except lmdb.Error as exc:
        error(f"Cannot open LMDB source {source_dir}: {exc}")
    count = _count(env.stat()["entries"], max_images)

    def make_item(key: bytes, value: bytes):
        def item():
            where = f"{source_dir} (key {key.decode(errors='replace')})"
            try:
                return _decode_lsun_value(value, cv2), None, where
            except Exception as exc:
                raise UnreadableImageError(where, exc) from exc

        return item

    def items():
        with env, env.begin(write=False) as txn:
            pairs = (make_item(bytes(k), bytes(v)) for k, v in txn.cursor())
            yield from _limited(count, pairs, on_unreadable)

    return count, items(), _LabelInfo(False)


def _labelled_arrays(source: str, images: np.ndarray, labels: np.ndarray, count: int) -> Iterator:
    for idx in range(len(images)):
        yield images[idx], int(labels[idx]), f"{source} (image {idx})"
        if idx >= count - 1:
            break


def _check_class_dataset(source, images, labels, num_images, image_shape, num_classes):
    if images.dtype != np.uint8 or images.shape != (num_images, *image_shape):
        error(
            f"{source}: expected {num_images} uint8 images of shape {image_shape}, found {images.dtype} {images.shape}"
        )
    if images.min() != 0 or images.max() != 255:
        error(f"{source}: expected pixel values spanning 0..255, found {images.min()}..{images.max()}")
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
        error(f"{source}: expected {num_images} integer labels, found {labels.dtype} {labels.shape}")
    if labels.min() != 0 or labels.max() != num_classes - 1:
        error(f"{source}: expected labels spanning 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")


def open_cifar10(tarball: str, *, max_images: int | None, on_unreadable: str, **options):
    del on_unreadable, options  # a corrupt tarball cannot be skipped image by image
    images, labels = [], []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in CIFAR10_TRAIN_BATCHES:
                with tar.extractfile(member) as f:
                    batch = pickle.load(f, encoding="latin1")
                images.append(np.asarray(batch["data"]).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch["labels"]))
    except KeyError as exc:
        error(f"{tarball}: missing {exc} (expected the CIFAR-10 python version)")
    except (OSError, tarfile.TarError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        error(f"Cannot read {tarball}: {exc}")
    images = np.concatenate(images).transpose(0, 2, 3, 1)  # channels last, like decoded image files
    labels = np.concatenate(labels)
    _check_class_dataset(tarball, images, labels, CIFAR10_NUM_IMAGES, (32, 32, 3), CIFAR10_NUM_CLASSES)
    count = _count(len(images), max_images)
    return count, _labelled_arrays(tarball, images, labels, count), _LabelInfo(True)


def _read_gz(path: str, header_bytes: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8, offset=header_bytes)
    except (OSError, EOFError, ValueError) as exc:
        error(f"Cannot read {path}: {exc}")


def open_mnist(images_gz: str, *, max_images: int | None, on_unreadable: str, **options):
    del on_unreadable, options  # a corrupt file cannot be skipped image by image
    folder, name = os.path.split(images_gz)
    labels_gz = os.path.join(folder, name.replace(MNIST_IMAGES_SUFFIX, MNIST_LABELS_SUFFIX))
    if not os.path.isfile(labels_gz):
        error(f"Missing MNIST labels file next to the images: {labels_gz}")
    images = _read_gz(images_gz, MNIST_IMAGES_HEADER_BYTES)
    labels = _read_gz(labels_gz, MNIST_LABELS_HEADER_BYTES)
    if images.size % (MNIST_SIZE * MNIST_SIZE) != 0:
        error(f"{images_gz}: {images.size} pixel bytes are not a whole number of {MNIST_SIZE}x{MNIST_SIZE} images")
    images = images.reshape(-1, MNIST_SIZE, MNIST_SIZE)
    images = np.pad(images, [(0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)], mode="constant")
    size = MNIST_SIZE + 2 * MNIST_PAD
    _check_class_dataset(images_gz, images, labels, MNIST_NUM_IMAGES, (size, size), MNIST_NUM_CLASSES)
    count = _count(len(images), max_images)
    return count, _labelled_arrays(images_gz, images, labels, count), _LabelInfo(True)


def open_dataset(
    source: str,
    *,
    max_images: int | None = None,
    on_unreadable: str | None = None,
    subfolders_as_labels: bool = False,
    keep_palette_alpha: bool = False,
):
    """Detect the source type and open it; returns (count, items, _LabelInfo) as described for the openers.

    `on_unreadable` is 'stop' or 'skip'; None picks the reference behaviour (skip for LSUN, stop otherwise).
    `subfolders_as_labels` (folders and zips only) makes each immediate subfolder a class; `keep_palette_alpha`
    decodes palette images as RGBA instead of RGB.
    """
    PIL.Image.init()  # completes PIL.Image.EXTENSION, which decides what counts as an image file
    default_policy = "stop"
    if os.path.isdir(source):
        if source.rstrip("/" + os.sep).endswith("_lmdb"):
            opener, default_policy = open_lmdb, "skip"
        else:
            opener = open_image_folder
    elif os.path.isfile(source):
        name = os.path.basename(source)
        if name == CIFAR10_ARCHIVE_NAME:
            opener = open_cifar10
        elif name == MNIST_IMAGES_NAME:
            opener = open_mnist
        elif source.endswith(".zip"):
            opener = open_image_zip
        else:
            error(
                f"Unknown source type: {source} (expected a folder, a .zip of images, an LSUN *_lmdb folder, "
                f"{CIFAR10_ARCHIVE_NAME} or {MNIST_IMAGES_NAME})"
            )
    else:
        error(f"Missing input file or directory: {source}")
    if subfolders_as_labels and opener not in (open_image_folder, open_image_zip):
        error(f"--subfolders-as-labels needs a folder or zip of images as --source, found {source}")
    return opener(
        source,
        max_images=max_images,
        on_unreadable=on_unreadable or default_policy,
        subfolders_as_labels=subfolders_as_labels,
        keep_palette_alpha=keep_palette_alpha,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Transforms: array in, array out (or None to drop the image while keeping its index).


def _as_colour_image(img: np.ndarray) -> PIL.Image.Image:
    """RGB or RGBA array -> PIL image (Pillow resizes RGBA with premultiplied alpha, so no colour bleeds in)."""
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"this transform needs RGB images, got an array of shape {list(img.shape)}")
    return PIL.Image.fromarray(img)


def _resize_only(img: np.ndarray, width: int | None, height: int | None, resample) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    size = (width or img.shape[1], height or img.shape[0])
    return np.array(PIL.Image.fromarray(img).resize(size, resample))


def _center_crop(img: np.ndarray, width: int, height: int, resample) -> np.ndarray:
    """Crop the largest centred region of the output's aspect ratio (a square for square output), then resize."""
    h, w = img.shape[:2]
    if width == height:
        crop_h = crop_w = min(h, w)
    elif w * height > h * width:  # wider than the output: keep the full height
        crop_h, crop_w = h, min(w, max(1, round(h * width / height)))
    else:
        crop_h, crop_w = min(h, max(1, round(w * height / width))), w
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    img = img[top : top + crop_h, left : left + crop_w]
    return np.array(_as_colour_image(img).resize((width, height), resample))


def _center_crop_wide(img: np.ndarray, width: int, height: int, resample) -> np.ndarray | None:
    crop_h = int(np.round(width * img.shape[0] / img.shape[1]))  # numpy rounds halves to even
    if img.shape[1] < width or crop_h < height:
        return None
    top = (img.shape[0] - crop_h) // 2
    img = img[top : top + crop_h]
    resized = np.array(_as_colour_image(img).resize((width, height), resample))
    # Letter-box into a black square; with alpha the bars are transparent black (black once composited).
    canvas = np.zeros([width, width, resized.shape[2]], dtype=np.uint8)
    canvas[(width - height) // 2 : (width + height) // 2] = resized
    return canvas


def _composite_over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 colour [H, W, C] and alpha [H, W, 1] -> uint8 colour * alpha / 255, rounded to nearest."""
    return ((colour.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def to_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """Decoded image ([H, W] or [H, W, 1|2|3|4]) -> [H, W] (grayscale) or [H, W, 3|4] with `channels` channels.

    None keeps the count, except that gray+alpha becomes RGBA (alpha is kept; PNGs and the networks have no 2-channel
    form). Dropping alpha composites over black (what the metrics see); adding it makes the image opaque; RGB becomes
    grayscale with Pillow's ITU-R 601-2 luma, grayscale becomes RGB by repetition.
    """
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
    have = img.shape[2]
    if channels is None:
        channels = 4 if have == 2 else have
    if have == channels or have not in (1, 2, 3, 4):
        return img[:, :, 0] if have == 1 else img  # other counts are reported by the first-image check
    colour, alpha = (img[:, :, :-1], img[:, :, -1:]) if have in (2, 4) else (img, None)
    if alpha is not None and channels != 4:
        colour = _composite_over_black(colour, alpha)
    if channels == 1:
        return colour[:, :, 0] if colour.shape[2] == 1 else np.array(PIL.Image.fromarray(colour).convert("L"))
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if channels == 3:
        return colour
    if alpha is None:
        alpha = np.full(colour.shape[:2] + (1,), 255, dtype=np.uint8)
    return np.concatenate([colour, alpha], axis=2)


def make_transform(transform: str | None, width: int | None, height: int | None, resize_filter: str) -> Callable:
    resample = RESIZE_FILTERS[resize_filter]
    if transform is None:
        return functools.partial(_resize_only, width=width, height=height, resample=resample)
    if transform == "center-crop":
        if width is None or height is None:
            error("must specify --width and --height when using " + transform + "transform")  # sic, reference text
        return functools.partial(_center_crop, width=width, height=height, resample=resample)
    if transform == "center-crop-wide":
        if width is None or height is None:
            error("must specify --width and --height when using " + transform + " transform")
        if height > width:
            # The letter-box canvas is --width square, so taller content can never fit: fail before any work.
            error(f"--height must not exceed --width when using {transform} transform (got {width}x{height})")
        return functools.partial(_center_crop_wide, width=width, height=height, resample=resample)
    raise ValueError(f"unknown transform {transform!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Destinations. Everything is written under a temporary name beside the destination and renamed into place only after
# the last file, so a failed run never leaves a half-written dataset behind. A run killed by a signal cannot clean up:
# its staging file or folder stays, hidden. While a run is alive it holds an exclusive lock on its staging entry, so a
# later run can tell a leftover (lockable: removed, with a note) from a conversion still in progress (reported).


def _lock(path: str) -> int | None:
    """An open descriptor of `path` holding an exclusive lock, or None where locks are not available."""
    return None if fcntl is None else _lock_fd(os.open(path, os.O_RDONLY))


def _lock_fd(fd: int) -> int | None:
    """Lock the open descriptor `fd` (kept open for the lock's lifetime); without locks, close it and return None."""
    if fcntl is None:
        os.close(fd)
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _unlock(fd: int | None):
    if fd is not None:
        os.close(fd)  # closing releases the lock


def _owner_is_gone(path: str) -> bool:
    """Whether nobody holds the lock on a staging entry (its run is gone); False when this cannot be told."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _remove_leftover(path: str) -> bool:
    """Remove the staging entry of a run that is gone, saying so; False (nothing done) if its run may be alive."""
    if not _owner_is_gone(path):
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)
    print(f"Note: removed {path}, left by a dataset_tool.py run that did not finish", file=sys.stderr)
    return True


def _clean_staging_beside(dest: str):
    """Remove the leftovers of earlier runs writing `dest` (staged beside it), or warn that one may be running."""
    folder, base = os.path.split(dest)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return  # creating the destination will say what is wrong
    for entry in sorted(e for e in entries if e.startswith(f".{base}.") and is_staging_leftover(e)):
        path = os.path.join(folder, entry)
        if not _remove_leftover(path):
            print(
                f"Warning: {path} is the staging entry of another dataset_tool.py run writing {dest} that may "
                "still be running; the run that finishes last replaces the other's output",
                file=sys.stderr,
            )


def _clean_staging_inside(dest: str, entries: list[str]) -> list[str]:
    """`entries` of the existing --dest folder without the staging folders of earlier runs, which are removed when
    their run is gone; one that may belong to a running conversion is an error naming it."""
    remaining = []
    for entry in entries:
        path = os.path.join(dest, entry)
        if not (entry.startswith(STAGING_PREFIX) and is_staging_leftover(entry)):
            remaining.append(entry)
        elif not _remove_leftover(path):
            error(
                f"--dest folder {dest} holds {path}, the hidden staging folder of a dataset_tool.py run that may "
                "still be running; wait for it, or remove that folder if no such run is left"
            )
    return remaining


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StagedDestination:
    """Context manager writing a folder or a stored (uncompressed) zip; `save(name, data)` adds one file.

    Any OS error while writing (unwritable or missing place, a file where a folder is needed, a full disk) becomes
    `Error: cannot write --dest <dest>: <reason>`, and whatever was staged is removed.
    """

    def __init__(self, dest: str):
        self.dest_arg = dest  # as given, for messages
        self.dest = os.path.normpath(dest)  # a trailing separator must not make the folder its own parent
        self.is_zip = dest.endswith(".zip")
        self.temp = None
        self.lock_fd = None
        self.staged_inside = False
        self.archive = None
        if os.path.isdir(dest):
            if self.is_zip:
                error(f"--dest {dest} is an existing directory, not a zip file")
            try:
                entries = os.listdir(dest)
            except OSError as exc:
                self._fail(exc, f"listing {dest}")
            if _clean_staging_inside(self.dest, entries):
                error("--dest folder must be empty")
        elif os.path.exists(dest) and not self.is_zip:
            error(f"--dest {dest} exists and is not a directory")
        _clean_staging_beside(self.dest)

    def _fail(self, exc: OSError, doing: str) -> NoReturn:
        # The OS error's own text would name the internal temporary file; say what was being done instead.
        error(f"cannot write --dest {self.dest_arg}: {exc.strerror or exc} ({doing})")

    def __enter__(self):
        if self.is_zip and os.path.islink(self.dest):
            self.dest = os.path.realpath(self.dest)  # write through the link, do not replace it with a file
        parent = os.path.dirname(self.dest)
        if parent:
            if os.path.exists(parent) and not os.path.isdir(parent):
                error(f"cannot write --dest {self.dest_arg}: {parent} is not a directory")
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                self._fail(exc, f"creating folder {exc.filename or parent}")
        # An existing (empty) folder is kept, with its owner and permissions, and may be '.', a link or a mount
        # point: stage inside it and move the entries up at the end. Anything else is staged beside it.
        stage_inside = not self.is_zip and os.path.isdir(self.dest)
        staging_dir = self.dest if stage_inside else parent or "."
        try:
            self._start_staging(staging_dir, stage_inside)
        except OSError as exc:
            self._discard()
            self._fail(exc, f"creating a temporary {'file' if self.is_zip else 'folder'} in {staging_dir}")
        return self

    def _start_staging(self, staging_dir: str, stage_inside: bool):
        prefix = "." + os.path.basename(self.dest) + "."
        if self.is_zip:
            fd, self.temp = tempfile.mkstemp(dir=staging_dir, prefix=prefix, suffix=STAGING_SUFFIX)
            self.lock_fd = _lock_fd(fd)
            os.chmod(self.temp, 0o666 & ~_umask())  # mkstemp's private 0600 is not meant for the result
            self.archive = zipfile.ZipFile(self.temp, mode="w", compression=zipfile.ZIP_STORED)
        elif stage_inside:
            self.temp = tempfile.mkdtemp(dir=staging_dir, prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX)
            self.staged_inside = True
            self.lock_fd = _lock(self.temp)
        else:
            self.temp = tempfile.mkdtemp(dir=staging_dir, prefix=prefix, suffix=STAGING_SUFFIX)
            os.chmod(self.temp, 0o777 & ~_umask())
            self.lock_fd = _lock(self.temp)

    def save(self, name: str, data: bytes):
        try:
            if self.archive is not None:
                self.archive.writestr(name, data)
                return
            path = os.path.join(self.temp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            self._fail(exc, f"writing {name}")

    def _discard(self):
        _unlock(self.lock_fd)
        self.lock_fd = None
        if self.archive is not None:
            try:
                self.archive.close()
            except OSError:
                pass  # the partial archive is removed anyway
            self.archive = None
        if self.temp is None:
            return
        if self.is_zip:
            try:
                os.remove(self.temp)
            except OSError:
                pass
        else:
            shutil.rmtree(self.temp, ignore_errors=True)

    def _finish(self):
        if self.archive is not None:
            self.archive.close()
            self.archive = None
        # Locked until the output is in place: a run started meanwhile must not take the staging entry for a leftover.
        if self.staged_inside:
            # dataset.json last, so that a folder holding it holds every image.
            for name in sorted(os.listdir(self.temp), key=lambda name: name == LABELS_FILE):
                os.replace(os.path.join(self.temp, name), os.path.join(self.dest, name))
            os.rmdir(self.temp)
        else:
            os.replace(self.temp, self.dest)
        _unlock(self.lock_fd)
        self.lock_fd = None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._discard()
            return False
        try:
            self._finish()
        except OSError as err:
            self._discard()
            self._fail(err, "finishing the output")
        return False


# ----------------------------------------------------------------------------------------------------------------------


def archive_name(idx: int) -> str:
    """Position in the source stream -> archive path, e.g. 12345 -> '00012/img00012345.png'."""
    digits = f"{idx:08d}"
    return f"{digits[:IMAGES_PER_SUBFOLDER_DIGITS]}/img{digits}.png"


def encode_png(img: np.ndarray) -> bytes:
    """[H, W] or [H, W, 1] -> 8-bit grayscale PNG, [H, W, 3] -> RGB PNG; stored uncompressed (level 0)."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def _image_attrs(img: np.ndarray) -> tuple[int, int, int]:
    return img.shape[1], img.shape[0], img.shape[2] if img.ndim == 3 else 1


def _check_first_image(width: int, height: int, channels: int):
    problem = image_sides_problem(width=width, height=height)
    if problem is not None and "aspect ratio" in problem:
        error(
            "Image dimensions after scale and crop are required to be square or of an aspect ratio between 1:4 and "
            f"4:1.  Got {width}x{height}"
        )
    if channels not in OUTPUT_CHANNELS:
        error("Input images must be stored as RGB, RGBA or grayscale (or use --channels)")
    if problem is not None:
        error("Image width/height after scale and crop are required to be power-of-two")


def convert_dataset(
    source: str,
    dest: str,
    *,
    max_images: int | None = None,
    transform: str | None = None,
    resize_filter: str = "lanczos",
    width: int | None = None,
    height: int | None = None,
    on_unreadable: str | None = None,
    channels: int | None = None,
    subfolders_as_labels: bool = False,
):
    """Convert `source` into `dest`; raises DatasetToolError on bad input (nothing is left at `dest` then).

    `channels` (1, 3, 4 or None = as the source has them) forces the channel count; `subfolders_as_labels` makes every
    immediate subfolder of a folder or zip source a class (sorted names -> 0 .. N-1, recorded as "class_names").
    """
    count, items, label_info = open_dataset(
        source,
        max_images=max_images,
        on_unreadable=on_unreadable,
        subfolders_as_labels=subfolders_as_labels,
        keep_palette_alpha=channels == 4,
    )
    with StagedDestination(dest) as out:
        transform_fn = make_transform(transform, width, height, resize_filter)
        labels, unlabelled, num_dropped = _write_images(out, items, count, transform_fn, channels)
        if label_info.has_labels and unlabelled:
            # As in the reference, the labels become null; the warning says why a labelled source lost them.
            print(
                f"Warning: {len(unlabelled)} of {len(labels)} images have no label in {LABELS_FILE} "
                f"(first: {unlabelled[0]}); writing the dataset without labels",
                file=sys.stderr,
            )
        if not labels:
            source_is_empty = count == 0 and max_images != 0  # --max-images 0 still reads one image
            _warn_nothing_written(dest, source_is_empty, num_dropped, transform)
        metadata = {"labels": labels if not unlabelled else None}
        if label_info.class_names is not None and not unlabelled:
            metadata[CLASS_NAMES_KEY] = label_info.class_names
        out.save(LABELS_FILE, json.dumps(metadata).encode("utf-8"))


def _write_images(out, items, count, transform_fn, channels):
    """Convert and save every item; returns ([name, label] pairs or None per image, source names of the images
    without a label, number of images the transform dropped)."""
    dataset_attrs = None
    labels, unlabelled = [], []
    num_dropped = 0
    for idx, (img, label, source_name) in enumerate(tqdm(items, total=count)):
        name = archive_name(idx)
        if img.dtype != np.uint8:
            error(f"Image {name}: expected 8 bits per channel, found {img.dtype}")
        try:
            img = transform_fn(to_channels(img, channels))
        except ValueError as exc:
            error(f"Image {name}: {exc}")
        if img is None:
            num_dropped += 1
            continue  # dropped by the transform; its index stays unused
        attrs = _image_attrs(img)
        if dataset_attrs is None:
            _check_first_image(*attrs)
            dataset_attrs = attrs
        elif attrs != dataset_attrs:
            error(
                f"Image {name} attributes must be equal across all images of the dataset.  Got:\n"
                f"  dataset width/cur image width: {dataset_attrs[0]}/{attrs[0]}\n"
                f"  dataset height/cur image height: {dataset_attrs[1]}/{attrs[1]}\n"
                f"  dataset channels/cur image channels: {dataset_attrs[2]}/{attrs[2]}"
            )
        out.save(name, encode_png(img))
        labels.append([name, label] if label is not None else None)
        if label is None:
            unlabelled.append(source_name)
    return labels, unlabelled, num_dropped


def _warn_nothing_written(dest: str, source_is_empty: bool, num_dropped: int, transform: str | None):
    """The empty dataset is still written (as the reference does), but a silent success would hide the mistake."""
    if source_is_empty:
        why = ": the source holds no image files"
    elif num_dropped:
        why = (
            f": {num_dropped} images were skipped by --transform={transform} "
            "(narrower than --width, or too short for --height once scaled to --width)"
        )
    else:
        why = ""
    print(f"Warning: no images were written to {dest}{why}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.pass_context
@click.option(
    "--source",
    help="Images to convert: a folder, a zip, an LSUN *_lmdb folder, the CIFAR-10 tarball or MNIST images",
    required=True,
    metavar="PATH",
)
@click.option(
    "--dest", help="Where to write the converted dataset: a folder or a .zip file", required=True, metavar="PATH"
)
@click.option(
    "--max-images", help="Stop after this many source images [default: all]", type=click.IntRange(min=0), default=None
)
@click.option(
    "--resize-filter",
    help="Resampling filter for every resize",
    type=click.Choice(list(RESIZE_FILTERS)),
    default="lanczos",
    show_default=True,
)
@click.option(
    "--transform",
    help="How to crop before resizing (needs --width and --height)",
    type=click.Choice(["center-crop", "center-crop-wide"]),
)
@click.option("--width", help="Width of the written images in pixels", type=click.IntRange(min=1))
@click.option("--height", help="Height of the written images in pixels", type=click.IntRange(min=1))
@click.option(
    "--on-unreadable",
    help="What to do with a source image that cannot be decoded: stop with an error naming it, or skip it with a "
    "warning  [default: skip for LSUN LMDB, stop otherwise]",
    type=click.Choice(ON_UNREADABLE_CHOICES),
    default=None,
)
@click.option(
    "--channels",
    help="Channels of the written images: 1 (grayscale), 3 (RGB) or 4 (RGBA)  [default: as the source images, "
    "gray+alpha becoming RGBA]",
    type=click.Choice(["1", "3", "4"]),
    default=None,
)
@click.option(
    "--subfolders-as-labels",
    help="Label each image of a folder or zip source by the immediate subfolder it lies in (sorted names -> class "
    "0, 1, ...; the names are recorded in dataset.json as class_names)",
    is_flag=True,
)
def main(
    ctx: click.Context,
    source: str,
    dest: str,
    max_images: int | None,
    resize_filter: str,
    transform: str | None,
    width: int | None,
    height: int | None,
    on_unreadable: str | None,
    channels: str | None,
    subfolders_as_labels: bool,
):
    """Convert an image dataset into the format used by the StyleGAN2-ADA training and metrics code.

    \b
    Sources (--source):
      folder          every image file below it, recursively, sorted by path
      *.zip           every image member of the archive
      *_lmdb folder   an LSUN LMDB database (needs `pip install lmdb`; opencv-python is used when installed)
      cifar-10-python.tar.gz      CIFAR-10, python version (with class labels)
      train-images-idx3-ubyte.gz  MNIST training set (with class labels; the labels file must sit beside it)

    \b
    Destinations (--dest):
      *.zip    an uncompressed zip archive (an existing file is replaced)
      folder   created if absent; must be empty if it exists

    The output holds uncompressed PNGs named NNNNN/imgNNNNNNNN.png (1000 per sub-folder) and a dataset.json at its
    root. Output is written under a hidden temporary name beside --dest (or inside it, for an existing empty
    folder) and moved into place at the end, so a failed run leaves no partial dataset; what a killed run leaves
    behind is removed by the next run to the same --dest.

    \b
    dataset.json has the form
      {"labels": [["00000/img00000000.png", 6], ["00000/img00000001.png", 9], ...]}
    with one [file name, label] pair per image, or {"labels": null} when the source has no labels. Labels come
    from CIFAR-10/MNIST class indices or, for folders and zips, from a dataset.json of the same form in the source,
    or with --subfolders-as-labels from the subfolders (then dataset.json also holds "class_names": [...]).
    Hidden files and folders (names starting with '.') are never read.

    Training needs images whose width and height are powers of two (square, or of an aspect ratio between 1:4 and
    4:1), all of the same size and grayscale, RGB or RGBA; use --transform, --width, --height and --channels to get
    there. --transform=center-crop crops the largest centred region of the --width:--height aspect ratio (a square
    for square output) and resizes it to --width x --height; --transform=center-crop-wide crops a band of the
    output aspect ratio, resizes it to --width x --height and letter-boxes it into a black --width x --width
    square (--height must not exceed --width; images narrower than --width, or too short, are skipped).
    Without --transform, images are only resized to --width/--height when these are given. Alpha is kept when
    the source images have it; --channels=1 or 3 composites RGBA over black, --channels=4 adds an opaque alpha.

    \b
    Example, class-labelled folders (data/cats/*.png, data/dogs/*.png) as a 2:1 RGBA dataset:
      python dataset_tool.py --source=data --dest=~/datasets/pets.zip --subfolders-as-labels \\
          --transform=center-crop --width=256 --height=128 --channels=4

    \b
    Example, LSUN cars as 512x384 content letter-boxed into 512x512:
      python dataset_tool.py --source=~/downloads/lsun/car_lmdb --dest=~/datasets/lsun_car.zip \\
          --transform=center-crop-wide --width=512 --height=384
    """
    if dest == "":
        ctx.fail("--dest output filename or directory must not be an empty string")
    if max_images == 0:
        print(
            "Warning: --max-images=0 still converts the first image (the reference's behaviour); "
            "use --max-images=1 to say so",
            file=sys.stderr,
        )
    try:
        convert_dataset(
            source,
            dest,
            max_images=max_images,
            transform=transform,
            resize_filter=resize_filter,
            width=width,
            height=height,
            on_unreadable=on_unreadable,
            channels=None if channels is None else int(channels),
            subfolders_as_labels=subfolders_as_labels,
        )
    except DatasetToolError as exc:
        print("Error: " + str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
