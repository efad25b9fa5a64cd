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
is corrupt, truncated, too large, not 8-bit, without power-of-two sides of an aspect ratio up to 4:1, or
whose size or channel count differs from the first image). Its `str()` is that one line also when a
DataLoader worker process raised it. The messages for the three conditions the reference reports start with the
reference wording: "Path must point to a directory or zip", "No image files found in the specified path"
and "Image files do not match the specified resolution".
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
from torch_utils import images as image_utils
from training.networks import MAX_ASPECT  # the networks' limit is the datasets' limit (1:4 .. 4:1)

try:
    import pyspng
except ImportError:
    pyspng = None

_CLASS_LABEL_DTYPE = np.int64  # Raw labels that are class indices; items get them one-hot.
_VECTOR_LABEL_DTYPE = np.float32  # Raw labels that are vectors; items get them as they are.
LABELS_FILE = "dataset.json"  # Only this exact root-level name holds labels.
CLASS_NAMES_KEY = "class_names"  # Optional entry of LABELS_FILE: the names of the classes 0, 1, ...
_MAX_SNIPPET = 60  # Characters of offending JSON quoted in error messages.
_PALETTE_MODES = ("P", "PA")  # Pillow modes whose pixels are palette indices.

# Class indices run 0 .. MAX_CLASSES - 1: the one-hot labels and the networks' embeddings have one entry per class,
# so one stray index (say 20000000) would otherwise ask for gigabytes.
MAX_CLASSES = 100_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# The largest file (or zip member, by its declared uncompressed size) read as an image or as the labels file: a zip
# of a few megabytes can declare gigabytes, and reading checks the size before allocating anything.
MAX_IMAGE_FILE_BYTES = 512 << 20
MAX_LABELS_FILE_BYTES = 1 << 30


# What `dataset_tool.py` stages its output in while it runs (a hidden folder inside an existing empty --dest folder,
# or beside --dest): a leftover of such a name is an unfinished conversion, never part of a dataset.
STAGING_PREFIX = ".dataset_tool."
STAGING_SUFFIX = ".tmp"


_WORKER_MESSAGE_START = "Caught "  # How torch.utils.data re-raises a worker's exception: type(message + traceback).


class DatasetError(OSError, ValueError):
    """Bad dataset input (path, archive, image file or `dataset.json`); the message names the file.

    `str()` is always the one-line message, also when a DataLoader worker raised the error: the loader then re-raises
    it in the main process as `DatasetError("Caught DatasetError in DataLoader worker ... Traceback ...")`, and the
    original line is taken back out of that text (the full text stays in `worker_report`).
    """

    def __init__(self, message=""):
        message = str(message)
        self.worker_report = None
        if message.startswith(_WORKER_MESSAGE_START) and "\n" in message:
            self.worker_report = message
            message = _last_exception_line(message)
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self),))

    def __str__(self):
        # OSError would format (errno, strerror) pairs; we always pass one message.
        return str(self.args[0]) if self.args else ""


def _last_exception_line(report):
    """The message of the exception a formatted traceback ends with (`module.Type: message` -> `message`)."""
    lines = [line for line in report.splitlines() if line.strip()]
    last = lines[-1] if lines else report
    head, sep, tail = last.partition(": ")
    return tail if sep and head.split(".")[-1].endswith("Error") else last


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
        """The image side, or for a non-square dataset the longer side (what the networks call `img_resolution`)."""
        assert len(self.image_shape) == 3  # [C, H, W]
        return max(self.image_shape[1], self.image_shape[2])

    @property
    def height(self):
        assert len(self.image_shape) == 3  # [C, H, W]
        return self.image_shape[1]

    @property
    def width(self):
        assert len(self.image_shape) == 3  # [C, H, W]
        return self.image_shape[2]

    @property
    def is_square(self):
        return self.height == self.width

    @property
    def class_names(self):
        """Names of the classes 0, 1, ... (`"class_names"` of `dataset.json`, e.g. from `dataset_tool.py
        --subfolders-as-labels`), or None when the labels file has none or labels are disabled."""
        return None

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


def _is_hidden(relative_name):
    """Whether a relative name (either separator) is or lies inside a hidden entry (a name starting with '.').

    Hidden entries are never part of a dataset: `.DS_Store`, `._x.png` copies made by macOS, editor back-ups, and
    the staging folders of unfinished `dataset_tool.py` runs.
    """
    return any(part.startswith(".") for part in relative_name.replace("\\", "/").split("/"))


def is_staging_leftover(name):
    """Whether a file or folder name has the form of `dataset_tool.py`'s staging names (`.<...>.tmp`)."""
    return name.startswith(".") and name.endswith(STAGING_SUFFIX)


def _folder_files(path):
    """Relative names (OS separator) of the files below `path`, skipping hidden entries; refuses staging leftovers."""
    leftovers = sorted(e for e in os.listdir(path) if e.startswith(STAGING_PREFIX) and is_staging_leftover(e))
    if leftovers:
        raise DatasetError(
            f"'{os.path.join(path, leftovers[0])}' is the hidden staging folder of a dataset_tool.py run that did not "
            f"finish, so '{path}' holds at most part of a dataset: empty the folder and run dataset_tool.py again"
        )
    names = set()
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # Pruned entries are not descended into.
        names.update(os.path.relpath(os.path.join(root, f), start=path) for f in files if not f.startswith("."))
    return names


def _staging_hint(path):
    """For a missing dataset path: a note naming a staging leftover of `dataset_tool.py` beside it, if any."""
    folder, base = os.path.split(os.path.normpath(path))
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return ""
    leftovers = sorted(e for e in entries if e.startswith(f".{base}.") and is_staging_leftover(e))
    if not leftovers:
        return ""
    return (
        f" (found '{os.path.join(folder, leftovers[0])}' beside it, left by a dataset_tool.py run that did not "
        f"finish; run dataset_tool.py again)"
    )


class ImageFolderDataset(Dataset):
    """Images from a directory tree or a ZIP archive, with optional labels from a root `dataset.json`.

    Images are the files with a Pillow-registered extension, in plain string order of their relative
    names; hidden entries (a path component starting with '.') never count. The raw shape comes from the
    first image; every image must be 8-bit, with power-of-two sides (square, or non-square up to 1:4 / 4:1),
    and of the same shape as the first. PNGs are decoded with pyspng when it is installed, other files
    with Pillow without mode conversion, except that palette images (P, PA) become RGB, as pyspng makes them.
    Sizes are checked before reading and decoding (MAX_IMAGE_FILE_BYTES, images.MAX_IMAGE_PIXELS).
    `dataset.json` holds `{"labels": [[relative_name, label], ...]}` (or `null`), where every label
    is a class index 0 .. MAX_CLASSES - 1, or every label is a list of finite float32 numbers of one common
    length, and optionally `"class_names"` (see `class_names`); other keys are ignored.

    Args:
        path:       directory or `.zip` file.
        resolution: expected image side (the longer side for non-square images); None accepts the first image's.
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
            raise DatasetError(f"Path must point to a directory or zip: '{path}' does not exist{_staging_hint(path)}")
        if os.path.isdir(path):
            self._type = "dir"
            self._all_fnames = _folder_files(path)
        elif _file_ext(path) == ".zip":
            self._type = "zip"
            self._all_fnames = {name for name in self._get_zipfile().namelist() if not _is_hidden(name)}
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
        if resolution is not None and max(raw_shape[2], raw_shape[3]) != resolution:
            raise DatasetError(
                f"Image files do not match the specified resolution: {self._describe(self._image_fnames[0])} "
                f"is {raw_shape[3]}x{raw_shape[2]} pixels, expected {resolution}x{resolution}"
                + ("" if raw_shape[2] == raw_shape[3] else f" or a longer side of {resolution}")
            )
        self._class_names = None
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

    def _read_file(self, fname, max_bytes=MAX_IMAGE_FILE_BYTES, limit_name="MAX_IMAGE_FILE_BYTES"):
        """The bytes of one file, refused before reading when it is (a zip member: declares to be) over `max_bytes`."""
        try:
            if self._type == "dir":
                with open(os.path.join(self._path, fname), "rb") as f:
                    _check_file_size(os.fstat(f.fileno()).st_size, max_bytes, limit_name, self._describe(fname))
                    return f.read()
            archive = self._get_zipfile()
            _check_file_size(archive.getinfo(fname).file_size, max_bytes, limit_name, self._describe(fname))
            return archive.read(fname)  # zipfile never returns more than the declared size.
        except DatasetError:
            raise
        except (OSError, zipfile.BadZipFile, zlib.error, KeyError, EOFError, NotImplementedError) as err:
            raise DatasetError(f"Cannot read {self._describe(fname)}: {_one_line(err)}") from err

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    # --- images --------------------------------------------------------------------------------------------

    def _decode_image(self, fname):
        """Decode and check one file; returns uint8 `[C, H, W]` with power-of-two H and W (`image_sides_problem`)."""
        data = self._read_file(fname)
        try:
            # Only the header is read here: the declared pixel count is checked before anything is decoded.
            with image_utils.open_image(io.BytesIO(data), self._describe(fname)) as pil_image:
                image = _decode_checked(data, pil_image, _file_ext(fname) == ".png")
        except image_utils.ImageFileError as err:
            if _declares_too_many_pixels(err):
                raise DatasetError(f"Image {err}") from err  # The message names the file.
            raise DatasetError(
                f"Image {self._describe(fname)} is corrupt or truncated: expected a decodable image, "
                f"decoder said: {_one_line(err.__cause__)}"
            ) from err
        except Exception as err:  # Decoders raise many types (RuntimeError, OSError, SyntaxError, ...).
            raise DatasetError(
                f"Image {self._describe(fname)} is corrupt or truncated: expected a decodable image, "
                f"decoder said: {type(err).__name__}: {_one_line(err)}"
            ) from err

        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # grayscale gets an explicit channel axis
        if image.ndim != 3:
            raise DatasetError(
                f"Image {self._describe(fname)}: expected a 2-D or 3-D pixel array, found shape {list(image.shape)}"
            )
        if image.dtype != np.uint8:
            raise DatasetError(f"Image {self._describe(fname)}: expected 8-bit pixels (uint8), found {image.dtype}")
        problem = image_sides_problem(width=image.shape[1], height=image.shape[0])
        if problem is not None:
            raise DatasetError(f"Image {self._describe(fname)}: {problem}")
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

    def _read_labels_doc(self):
        """The parsed `dataset.json` object, or None when there is none; read once per process."""
        if LABELS_FILE not in self._all_fnames:
            return None
        where = self._describe(LABELS_FILE)
        try:
            doc = json.loads(self._read_file(LABELS_FILE, MAX_LABELS_FILE_BYTES, "MAX_LABELS_FILE_BYTES"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"Labels file {where} is malformed: expected JSON, found invalid text ({err})") from err
        if not isinstance(doc, dict):
            raise DatasetError(
                f'Labels file {where} is malformed: expected a JSON object with a "labels" entry, found {_snippet(doc)}'
            )
        return doc  # Other keys than "labels" and "class_names" are ignored, as the reference's reader does.

    def _load_raw_labels(self):
        doc = self._read_labels_doc()
        if doc is None:
            return None
        where = self._describe(LABELS_FILE)
        self._class_names = _checked_class_names(doc.get(CLASS_NAMES_KEY), where)
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
        labels = _labels_to_array([table[n] for n in names], names, where)
        if self._class_names is not None:
            _check_classes_named(labels, self._class_names, where)
        return labels

    @property
    def class_names(self):
        if not self._use_labels:
            return None
        self._get_raw_labels()  # Reads and checks "class_names" along with the labels.
        return None if self._class_names is None else list(self._class_names)


def _checked_class_names(names, where):
    """The `"class_names"` entry of `dataset.json`: absent/null, or a list of distinct strings."""
    if names is None:
        return None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DatasetError(
            f'Labels file {where}: expected "{CLASS_NAMES_KEY}" to be a list of strings, found {_snippet(names)}'
        )
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DatasetError(f'Labels file {where}: "{CLASS_NAMES_KEY}" names {duplicate!r} more than once')
    return names


def _check_classes_named(labels, class_names, where):
    if not _is_class_table(labels):
        raise DatasetError(f'Labels file {where}: "{CLASS_NAMES_KEY}" needs integer class labels, found label vectors')
    if labels.size and int(labels.max()) >= len(class_names):
        raise DatasetError(
            f'Labels file {where}: class index {int(labels.max())} has no name; "{CLASS_NAMES_KEY}" names '
            f"{len(class_names)} classes"
        )


def _check_file_size(size, max_bytes, limit_name, where):
    if size > max_bytes:
        raise DatasetError(
            f"Cannot read {where}: it holds {size} bytes (uncompressed), more than the {max_bytes} accepted "
            f"(training.dataset.{limit_name})"
        )


def _declares_too_many_pixels(err):
    """Whether `images.open_image` refused a file for its declared size (rather than for being unreadable)."""
    return err.__cause__ is None or isinstance(err.__cause__, PIL.Image.DecompressionBombError)


def _one_line(err):
    return " ".join(str(err).split())


def _decode_checked(data, pil_image, is_png):
    """Pixels of an opened (header-checked) image: pyspng for PNGs when installed, else Pillow without mode
    conversion, except palette images, which become RGB (as pyspng makes them)."""
    if pyspng is not None and is_png:
        try:
            return pyspng.load(data)
        except Exception:
            pass  # pyspng rejects some valid PNGs (e.g. gray+alpha); Pillow has the final say.
    if pil_image.mode in _PALETTE_MODES:
        # Palette indices are not intensities; expand to colours as pyspng does for PNGs.
        return np.array(pil_image.convert("RGB"))
    return np.array(pil_image)


def image_sides_problem(width, height):
    """None when `width` x `height` is a valid dataset image size, else what is wrong, in words.

    Valid: both sides powers of two, the longer at most MAX_ASPECT times the shorter (square, or 1:4 .. 4:1).
    """

    def power_of_two(n):
        return n >= 1 and (n & (n - 1)) == 0

    if not (power_of_two(width) and power_of_two(height)):
        return f"expected a width and a height that are powers of two, found {width}x{height} pixels"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"expected an aspect ratio between 1:{MAX_ASPECT} and {MAX_ASPECT}:1, found {width}x{height} pixels"
    return None


def class_index_problem(label):
    """None when a number is a valid class index (an integer 0 .. MAX_CLASSES - 1), else what is wrong, in words."""
    if isinstance(label, float) and not math.isfinite(label):
        return "not a finite number"
    if label != int(label):  # Exact for Python ints of any size.
        return "not an integer"
    if label < 0:
        return "negative"
    if label >= MAX_CLASSES:
        return "above the limit training.dataset.MAX_CLASSES"
    return None


def vector_label_problem(label):
    """None when every entry of a list of numbers is finite within float32's range, else what is wrong, in words."""
    for i, x in enumerate(label):
        if isinstance(x, float) and not math.isfinite(x):
            return f"entry {i} is not a finite number"
        if abs(x) > _FLOAT32_MAX:  # Exact for ints of any size; a float32 would become inf.
            return f"entry {i} is beyond the float32 range"
    return None


def _labels_to_array(labels, names, where):
    """Class indices -> int64 `[R]`; label vectors -> float32 `[R, D]`. Rejects mixed or malformed labels."""
    first_class = first_vector = None
    for name, label in zip(names, labels):
        if _is_number(label):
            problem = class_index_problem(label)
            if problem is not None:
                raise DatasetError(
                    f"Labels file {where}: label of '{name}' must be a non-negative integer class index below "
                    f"{MAX_CLASSES}, found {_snippet(label)} ({problem})"
                )
            first_class = first_class or (name, label)
        elif isinstance(label, list) and all(_is_number(x) for x in label):
            problem = vector_label_problem(label)
            if problem is not None:
                raise DatasetError(
                    f"Labels file {where}: label of '{name}' must be a vector of finite float32 numbers, found "
                    f"{_snippet(label)} ({problem})"
                )
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
    return np.array(labels, dtype=_VECTOR_LABEL_DTYPE)  # [R, D]; D may be 0.
