"""Training datasets: a map-style `Dataset` base and `ImageFolderDataset` over a folder or a ZIP archive.

Items are `(image, label)` pairs: `image` is a uint8 numpy array `[C, H, W]` and `label` a float32 vector
`[label_dim]` (one-hot for integer class labels, zero-length when labels are disabled or absent).

Dataset index -> raw image index: `max_size` keeps a seeded random subset of the raw images (shuffle
`arange(R)` with `numpy.random.RandomState(random_seed)`, keep the first `max_size`, sort ascending), then
`xflip` appends a horizontally mirrored copy of every kept image (`[idx..., idx...]`, flags `[0..., 1...]`).

Errors: every problem with the input data raises `DatasetError`, a subclass of both `OSError` (so callers
that treat dataset problems as I/O errors, like `train.py --data`, report it as a one-line message) and
`ValueError`. The message names the offending file, what was expected and what was found. It is raised
while opening the dataset for everything that is cheap to check there (missing path, not a directory or
ZIP, unreadable ZIP, no images, the first image's decoding / dtype / shape / `resolution`, and, when
`use_labels` is set, the whole of `dataset.json`), and otherwise when the item is read (a later image that
is corrupt, truncated, not 8-bit, not power-of-two sized with an aspect ratio of 1:4 to 4:1, or whose
size or channel count differs from the first image). The messages for the three conditions the reference
reports start with the reference wording: "Path must point to a directory or zip", "No image files found
in the specified path" and "Image files do not match the specified resolution".
"""

import contextlib
import io
import json
import math
import os
import zipfile
import zlib

import numpy as np
import PIL.Image
import torch

import dnnlib
from training.networks import MAX_ASPECT

try:
    import pyspng
except ImportError:
    pyspng = None

_CLASS_LABEL_DTYPE = np.int64  # Raw labels that are class indices; items get them one-hot.
_VECTOR_LABEL_DTYPE = np.float32  # Raw labels that are vectors; items get them as they are.
LABELS_FILE = "dataset.json"  # Only this exact root-level name holds labels.
_MAX_SNIPPET = 60  # Characters of offending JSON quoted in error messages.
_PALETTE_MODES = ("P", "PA")  # Pillow modes whose pixels are palette indices.


class DatasetError(OSError, ValueError):
    """Bad dataset input (path, archive, image file or `dataset.json`); the message names the file."""

    def __str__(self):
        # OSError would format (errno, strerror) pairs; we always pass one message.
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------


class Dataset(torch.utils.data.Dataset):
    """Map-style dataset of uint8 `[C, H, W]` images and float32 labels; subclasses load the raw data.

    Args:
        name:        dataset name.
        raw_shape:   `[num_raw_images, C, H, W]`.
        max_size:    cap on the number of raw images used (None = all); applied before x-flip.
        use_labels:  load labels; when False the label dimension is zero.
        xflip:       double the dataset with horizontally mirrored copies.
        random_seed: seed used only for the `max_size` subset.
    """

    # Attributes pickled as None and rebuilt lazily on first use. Labels are cheap to re-read and may be large,
    # so DataLoader workers reload them rather than receive a copy.
    _UNPICKLED_ATTRS = ("_raw_labels",)

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        num_raw = self._raw_shape[0]
        self._raw_idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None:
            if max_size < 0:
                raise DatasetError(f"Dataset '{name}': max_size must be None or >= 0, found {max_size}")
            if num_raw > max_size:
                # A fresh generator, drawn from only when subsetting, keeps the subset reproducible.
                np.random.RandomState(random_seed).shuffle(self._raw_idx)
                self._raw_idx = np.sort(self._raw_idx[:max_size])

        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        """Raw labels of all R raw images: int64 `[R]` class indices or float32 `[R, D]` (`[R, 0]` = none)."""
        if self._raw_labels is None:
            self._raw_labels = _checked_raw_labels(self._read_raw_labels(), num_raw=self._raw_shape[0])
        return self._raw_labels

    def _read_raw_labels(self):
        """The subclass's labels when they are wanted and exist, else an empty float32 `[R, 0]` table."""
        loaded = self._load_raw_labels() if self._use_labels else None
        if loaded is None:
            return np.zeros([self._raw_shape[0], 0], dtype=_VECTOR_LABEL_DTYPE)
        return loaded

    def _raw_label_of(self, idx):
        """Raw label row of item `idx` (a view or numpy scalar into the cached table)."""
        return self._get_raw_labels()[self._raw_idx[idx]]

    def close(self):
        """Release resources held by the subclass (no-op here)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _load_raw_image(self, raw_idx):
        """Subclass hook: uint8 `[C, H, W]` array of raw image `raw_idx`."""
        raise NotImplementedError

    def _load_raw_labels(self):
        """Subclass hook: int64 `[R]` or float32 `[R, D]` array, or None when there are no labels."""
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        for attr in self._UNPICKLED_ATTRS:
            state[attr] = None
        return state

    def __del__(self):
        # Interpreter shutdown may already have torn down what close() needs; there is nobody to report to.
        with contextlib.suppress(Exception):
            self.close()

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        """Returns (uint8 `[C, H, W]` image, float32 `[label_dim]` label)."""
        image = self._load_raw_image(self._raw_idx[idx])
        _check_raw_image(image, self.image_shape)
        if self._xflip[idx]:
            assert image.ndim == 3, f"x-flip needs a [C, H, W] image, found shape {list(image.shape)}"
            image = image[..., ::-1]  # mirror along W, the last axis
        # Always a fresh contiguous array: the hook may hand out a view of data it keeps.
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """Float32 `[label_dim]` label of item `idx`: one-hot for class labels, else a copy of the vector."""
        raw_label = self._raw_label_of(idx)
        if self.has_onehot_labels:
            return _one_hot(raw_label, self.label_dim)
        return raw_label.copy()

    def get_details(self, idx):
        """Record of item `idx`: `raw_idx` (int), `xflip` (bool) and `raw_label` (int64 scalar or float32 row)."""
        return dnnlib.EasyDict(
            raw_idx=int(self._raw_idx[idx]),
            xflip=bool(self._xflip[idx]),
            raw_label=self._raw_label_of(idx).copy(),
        )

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """`[C, H, W]`."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3  # [C, H, W]
        return self.image_shape[0]

    @property
    def resolution(self):
        """The larger image side (the side of square images), as the networks' `img_resolution`."""
        assert len(self.image_shape) == 3  # [C, H, W]
        return max(self.image_shape[1:])

    @property
    def label_shape(self):
        """`[num_classes]` for class labels (over all raw images, not just the subset), else `[D]`."""
        if self._label_shape is None:
            self._label_shape = _label_shape_of(self._get_raw_labels())
        return list(self._label_shape)

    @property
    def label_dim(self):
        """Length of an item's label vector (the number of classes for one-hot labels, 0 without labels)."""
        shape = self.label_shape
        assert len(shape) == 1, f"label_dim needs one-dimensional labels, found label shape {shape}"
        return shape[0]

    @property
    def has_labels(self):
        return any(self.label_shape)  # False for [0]: labels disabled or absent

    @property
    def has_onehot_labels(self):
        return _is_class_table(self._get_raw_labels())


def _is_class_table(raw_labels):
    """Whether a raw label table holds class indices (items get them one-hot) rather than label vectors."""
    return raw_labels.dtype == _CLASS_LABEL_DTYPE


def _label_shape_of(raw_labels):
    """Label shape of a raw table: [largest class index + 1] for class indices, else the shape of one vector."""
    if _is_class_table(raw_labels):
        return [int(np.max(raw_labels)) + 1]
    return list(raw_labels.shape[1:])


def _checked_raw_labels(labels, num_raw):
    """Assert that a label table fits the contract of `Dataset._load_raw_labels` for `num_raw` images."""
    assert isinstance(labels, np.ndarray), f"raw labels must be a numpy array, found {type(labels).__name__}"
    assert labels.shape[0] == num_raw, f"expected raw labels for {num_raw} images, found {labels.shape[0]}"
    assert labels.dtype in (_VECTOR_LABEL_DTYPE, _CLASS_LABEL_DTYPE), f"unsupported raw label dtype {labels.dtype}"
    if _is_class_table(labels):
        assert labels.ndim == 1, f"class labels must be one index per image, found shape {list(labels.shape)}"
        assert (labels >= 0).all(), "class labels must be non-negative"
    return labels


def _is_valid_image_size(height, width):
    """Both sides powers of two, the longer at most MAX_ASPECT times the shorter (square is the usual case)."""
    powers_of_two = all(side >= 1 and (side & (side - 1)) == 0 for side in (height, width))
    return powers_of_two and max(height, width) <= MAX_ASPECT * min(height, width)


def _check_raw_image(image, image_shape):
    """Assert that a subclass hook returned a uint8 image of the dataset's `[C, H, W]` shape."""
    assert isinstance(image, np.ndarray), f"raw image must be a numpy array, found {type(image).__name__}"
    assert list(image.shape) == image_shape, f"raw image shape {list(image.shape)} != dataset shape {image_shape}"
    assert image.dtype == np.uint8, f"raw image must be uint8, found {image.dtype}"


def _one_hot(class_index, num_classes):
    """Float32 `[num_classes]` vector that is 1 at `class_index` and 0 elsewhere."""
    return (np.arange(num_classes) == class_index).astype(np.float32)


# ----------------------------------------------------------------------------


def _file_ext(fname):
    return os.path.splitext(fname)[1].lower()


def _image_extensions():
    PIL.Image.init()  # Registers every installed Pillow plugin, and with it its file extensions.
    return set(PIL.Image.EXTENSION)


def _snippet(value):
    text = json.dumps(value)
    return text if len(text) <= _MAX_SNIPPET else text[: _MAX_SNIPPET - 3] + "..."


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


class ImageFolderDataset(Dataset):
    """Images from a directory tree or a ZIP archive, with optional labels from a root `dataset.json`.

    Images are the files with a Pillow-registered extension, in plain string order of their relative
    names. The raw shape comes from the first image; every image must be 8-bit, with power-of-two width and
    height at most MAX_ASPECT apart (square is the usual case), and of the same shape as the first. PNGs are
    decoded with pyspng when it is installed, other files with Pillow without mode conversion, except that
    palette images (P, PA) become RGB, as pyspng makes them.
    `dataset.json` holds `{"labels": [[relative_name, label], ...]}` (or `null`), where every label
    is a non-negative integer class index, or every label is a list of numbers of one common length.

    Args:
        path:       directory or `.zip` file.
        resolution: expected (larger) image side; None accepts the first image's.
        **base_kwargs: `max_size`, `use_labels`, `xflip`, `random_seed` (see `Dataset`).
    """

    # Open file handles cannot cross process boundaries; each worker reopens the archive on first use.
    _UNPICKLED_ATTRS = Dataset._UNPICKLED_ATTRS + ("_zipfile", "_zipfile_pid")

    def __init__(self, path, resolution=None, **base_kwargs):
        self._path = path
        self._zipfile = None
        self._zipfile_pid = None

        try:
            self._open(path, resolution, base_kwargs)
        except BaseException:
            self.close()  # Do not leave the archive open behind a failed construction.
            raise

    def _open(self, path, resolution, base_kwargs):
        """Scan the source, probe the first image and initialise the base class."""
        if not os.path.exists(path):
            raise DatasetError(f"Path must point to a directory or zip: '{path}' does not exist")
        if os.path.isdir(path):
            self._type = "dir"
            self._all_fnames = {
                os.path.relpath(os.path.join(root, fname), start=path)
                for root, _dirs, files in os.walk(path)
                for fname in files
            }
        elif _file_ext(path) == ".zip":
            self._type = "zip"
            self._all_fnames = set(self._get_zipfile().namelist())
        else:
            raise DatasetError(
                f"Path must point to a directory or zip: '{path}' is a file with extension "
                f"'{_file_ext(path)}', expected a directory or a '.zip' file"
            )

        extensions = _image_extensions()
        self._image_fnames = sorted(fname for fname in self._all_fnames if _file_ext(fname) in extensions)
        if len(self._image_fnames) == 0:
            raise DatasetError(
                f"No image files found in the specified path: '{path}' has {len(self._all_fnames)} entries, "
                f"none with an image extension (e.g. .png, .jpg)"
            )

        name = os.path.splitext(os.path.basename(path))[0]
        first_image = self._decode_image(self._image_fnames[0])
        raw_shape = [len(self._image_fnames)] + list(first_image.shape)
        if resolution is not None and max(raw_shape[2:]) != resolution:
            expected = (
                f"{resolution}x{resolution}" if raw_shape[2] == raw_shape[3] else f"a larger side of {resolution}"
            )
            raise DatasetError(
                f"Image files do not match the specified resolution: {self._describe(self._image_fnames[0])} "
                f"is {raw_shape[3]}x{raw_shape[2]} pixels, expected {expected}"
            )
        super().__init__(name=name, raw_shape=raw_shape, **base_kwargs)
        if self._use_labels:
            self._get_raw_labels()  # Validate dataset.json now rather than at the first item.

    # --- file access ---------------------------------------------------------------------------------------

    def _describe(self, fname):
        """Human-readable location of a member of the dataset, for error messages."""
        if self._type == "zip":
            return f"'{fname}' in '{self._path}'"
        return f"'{os.path.join(self._path, fname)}'"

    def _get_zipfile(self):
        assert self._type == "zip"
        # A handle inherited through fork shares its file offset with the parent, so each process opens its own.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except zipfile.BadZipFile as err:
                raise DatasetError(
                    f"Path must point to a directory or zip: '{self._path}' is not a valid ZIP archive ({err})"
                ) from err
            except OSError as err:
                raise DatasetError(f"Cannot open ZIP archive '{self._path}': {err}") from err
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _read_file(self, fname):
        try:
            if self._type == "dir":
                with open(os.path.join(self._path, fname), "rb") as f:
                    return f.read()
            return self._get_zipfile().read(fname)
        except DatasetError:
            raise
        except (OSError, zipfile.BadZipFile, zlib.error, KeyError) as err:
            raise DatasetError(f"Cannot read {self._describe(fname)}: {err}") from err

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    # --- images --------------------------------------------------------------------------------------------

    def _decode_image(self, fname):
        """Decode and check one file; returns uint8 `[C, H, W]`, H and W powers of two at most MAX_ASPECT apart."""
        data = self._read_file(fname)
        image = None
        if pyspng is not None and _file_ext(fname) == ".png":
            try:
                image = pyspng.load(data)
            except Exception:
                pass  # pyspng rejects some valid PNGs (e.g. gray+alpha); Pillow has the final say.
        try:
            if image is None:
                with PIL.Image.open(io.BytesIO(data)) as pil_image:
                    if pil_image.mode in _PALETTE_MODES:
                        # Palette indices are not intensities; expand to colours as pyspng does for PNGs.
                        pil_image = pil_image.convert("RGB")
                    image = np.array(pil_image)
        except Exception as err:  # Decoders raise many types (RuntimeError, OSError, SyntaxError, ...).
            raise DatasetError(
                f"Image {self._describe(fname)} is corrupt or truncated: expected a decodable image, "
                f"decoder said: {type(err).__name__}: {err}"
            ) from err

        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # grayscale gets an explicit channel axis
        if image.ndim != 3:
            raise DatasetError(
                f"Image {self._describe(fname)}: expected a 2-D or 3-D pixel array, found shape {list(image.shape)}"
            )
        if image.dtype != np.uint8:
            raise DatasetError(f"Image {self._describe(fname)}: expected 8-bit pixels (uint8), found {image.dtype}")
        height, width = image.shape[:2]
        if not _is_valid_image_size(height, width):
            raise DatasetError(
                f"Image {self._describe(fname)}: expected power-of-two width and height with an aspect ratio "
                f"between 1:{MAX_ASPECT} and {MAX_ASPECT}:1, found {width}x{height} pixels"
            )
        return image.transpose(2, 0, 1)  # channels first, as the networks expect

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        image = self._decode_image(fname)
        if list(image.shape) != self.image_shape:
            channels, height, width = self.image_shape
            raise DatasetError(
                f"Image {self._describe(fname)}: expected {width}x{height} pixels with {channels} channel(s) "
                f"like the first image '{self._image_fnames[0]}', found {image.shape[2]}x{image.shape[1]} "
                f"with {image.shape[0]}"
            )
        return image

    # --- labels --------------------------------------------------------------------------------------------

    def _load_raw_labels(self):
        if LABELS_FILE not in self._all_fnames:
            return None
        where = self._describe(LABELS_FILE)
        try:
            doc = json.loads(self._read_file(LABELS_FILE))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"Labels file {where} is malformed: expected JSON, found invalid text ({err})") from err
        if not isinstance(doc, dict):
            raise DatasetError(
                f'Labels file {where} is malformed: expected a JSON object with a "labels" entry, found {_snippet(doc)}'
            )
        entries = doc.get("labels")
        if entries is None:
            return None
        if not isinstance(entries, list):
            raise DatasetError(
                f'Labels file {where} is malformed: expected "labels" to be a list of [file_name, label] pairs '
                f"or null, found {_snippet(entries)}"
            )

        table = {}
        for i, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise DatasetError(
                    f"Labels file {where} is malformed: expected labels[{i}] to be a [file_name, label] pair, "
                    f"found {_snippet(entry)}"
                )
            table[entry[0]] = entry[1]  # On duplicates the last one wins.

        # Names in dataset.json always use '/', whatever the OS separator.
        names = [fname.replace("\\", "/") for fname in self._image_fnames]
        missing = [n for n in names if n not in table]
        if missing:
            raise DatasetError(
                f"Labels file {where} has no label for {len(missing)} of {len(names)} images, "
                f"e.g. '{missing[0]}': expected one [file_name, label] pair per image"
            )
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise DatasetError(
                f"Labels file {where} names {len(unknown)} file(s) that are not images of the dataset, "
                f"e.g. '{unknown[0]}'"
            )
        return _labels_to_array([table[n] for n in names], names, where)


def _labels_to_array(labels, names, where):
    """Class indices -> int64 `[R]`; label vectors -> float32 `[R, D]`. Rejects mixed or malformed labels."""
    first_class = first_vector = None
    for name, label in zip(names, labels):
        if _is_number(label):
            if not math.isfinite(label) or label < 0 or label != int(label):
                raise DatasetError(
                    f"Labels file {where}: label of '{name}' must be a non-negative integer class index, "
                    f"found {_snippet(label)}"
                )
            first_class = first_class or (name, label)
        elif isinstance(label, list) and all(_is_number(x) for x in label):
            if first_vector is not None and len(label) != len(first_vector[1]):
                raise DatasetError(
                    f"Labels file {where}: label vectors must all have the same length, found "
                    f"{len(first_vector[1])} for '{first_vector[0]}' and {len(label)} for '{name}'"
                )
            first_vector = first_vector or (name, label)
        else:
            raise DatasetError(
                f"Labels file {where}: label of '{name}' must be an integer class index or a list of numbers, "
                f"found {_snippet(label)}"
            )
        if first_class is not None and first_vector is not None:
            raise DatasetError(
                f"Labels file {where} mixes label kinds: integer class label for '{first_class[0]}' and label "
                f"vector for '{first_vector[0]}'; expected one kind for all images"
            )
    if first_class is not None:
        return np.array([int(x) for x in labels], dtype=_CLASS_LABEL_DTYPE)
    return np.array(labels, dtype=_VECTOR_LABEL_DTYPE)  # [R, D]; D may be 0.
