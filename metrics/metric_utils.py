"""Shared machinery of the quality metrics: options, feature detectors, feature statistics, progress reporting.

Every metric reduces to "run a pretrained detector network over real and/or generated images and accumulate its
outputs"; this module owns that part so the individual metric modules only contain the final arithmetic. The
detector URLs, the statistics cache (names and format) and the order of random draws are a compatibility contract:
see docs/compatibility.md, "Metrics".
"""

import copy
import dataclasses
import hashlib
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import tqdm

import dnnlib
from dnnlib.atomic import atomic_pickle
from torch_utils import misc
from torch_utils.images import generator_to_uint8
from torch_utils.launch import default_device

# ----------------------------------------------------------------------------------------------------------------------
# Options.


class MetricOptions:
    """Everything a metric function needs to know about what to evaluate and where.

    `dataset_kwargs` and `G_kwargs` are copied so that the per-metric overrides never leak into the caller's dicts.
    """

    def __init__(
        self,
        G=None,
        G_kwargs={},  # noqa: B006 -- copied below, never mutated; keeps the reference signature.
        dataset_kwargs={},  # noqa: B006
        num_gpus=1,
        rank=0,
        device=None,
        progress=None,
        cache=True,
    ):
        assert 0 <= rank < num_gpus, f"rank must satisfy 0 <= rank < num_gpus, got rank={rank}, num_gpus={num_gpus}"
        self.G = G
        self.G_kwargs = dnnlib.EasyDict(G_kwargs)
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs)
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = device if device is not None else default_device(rank)
        self.progress = progress.sub() if progress is not None and rank == 0 else ProgressMonitor()
        self.cache = cache


# ----------------------------------------------------------------------------------------------------------------------
# Feature detectors.

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"

# Detector files can be placed by hand under their published names (e.g. `inception-2015-12-05.pt`), so that
# machines without internet access can evaluate metrics. Search order: the folder given to `set_detector_dir`
# (calc_metrics.py --detector-dir), else $STYLEGAN_DETECTOR_DIR; then `<dnnlib cache root>/detectors`; then the
# download (itself cached under `<dnnlib cache root>/downloads`).
DETECTOR_DIR_ENV = "STYLEGAN_DETECTOR_DIR"

_detector_dir = None
_feature_detector_cache = dict()


def set_detector_dir(path):
    """Make `get_feature_detector` look for `<path>/<file name of the URL>` first (None restores the default)."""
    global _detector_dir
    _detector_dir = path


def get_detector_dir():
    """The configured local detector folder, or None: `set_detector_dir` first, then `$STYLEGAN_DETECTOR_DIR`."""
    if _detector_dir is not None:
        return _detector_dir
    return os.environ.get(DETECTOR_DIR_ENV) or None


def detector_search_dirs():
    """Folders searched for detector files before downloading, in order."""
    dirs = [get_detector_dir(), dnnlib.make_cache_dir_path("detectors")]
    return [d for d in dirs if d is not None]


def get_feature_detector_name(url):
    """Short name of a detector (URL base name without extension); part of the statistics cache file names."""
    return os.path.splitext(url.split("/")[-1])[0]


def _detector_file_name(url):
    return url.split("/")[-1]


def _open_detector(url, verbose):
    """Open the detector file: local folders first, then the (cached) download. Returns a binary file object."""
    file_name = _detector_file_name(url)
    search_dirs = detector_search_dirs()
    for local_dir in search_dirs:
        local_path = os.path.join(local_dir, file_name)
        if os.path.isfile(local_path):
            return open(local_path, "rb")
    try:
        return dnnlib.util.open_url(url, verbose=verbose)
    except Exception as err:
        raise dnnlib.util.DownloadError(  # An OSError; the command lines print its message alone.
            f"Could not load feature detector {get_feature_detector_name(url)!r}: downloading {url} failed "
            f"({type(err).__name__}: {err}) and no local copy was found in {' or '.join(search_dirs)}. "
            f"Fetch {url} by hand and save it as {os.path.join(search_dirs[0], file_name)}"
            + ("" if get_detector_dir() is not None else f" (or in a folder named by ${DETECTOR_DIR_ENV})")
            + "."
        ) from err


_CPU = torch.device("cpu")


def get_feature_detector(url, device=_CPU, num_gpus=1, rank=0, verbose=False):
    """Load a TorchScript feature detector once per (url, device) and return the shared module (eval mode)."""
    assert 0 <= rank < num_gpus
    key = (url, device)
    if key not in _feature_detector_cache:
        is_leader = rank == 0
        if not is_leader and num_gpus > 1:
            torch.distributed.barrier()  # The leader downloads first, the others then hit the disk cache.
        with _open_detector(url, verbose=(verbose and is_leader)) as f, warnings.catch_warnings():
            # The published detectors are TorchScript archives; newer PyTorch flags that format as deprecated
            # (DeprecationWarning, and FutureWarning from 2.14 on), with nothing a user could do about it.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit", category=FutureWarning)
            _feature_detector_cache[key] = torch.jit.load(f).eval().to(device)
        if is_leader and num_gpus > 1:
            torch.distributed.barrier()  # Release the waiting processes.
    return _feature_detector_cache[key]


# ----------------------------------------------------------------------------------------------------------------------
# Feature statistics.

# The globals a statistics cache file may name: what pickling numpy arrays needs (numpy >= 2 writes `numpy._core`,
# numpy 1 and the reference's files `numpy.core`). Anything else would run code from the cache folder on load.
_STATS_PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _StatsUnpickler(pickle.Unpickler):
    """Unpickler for `FeatureStats` files that refuses every global outside `_STATS_PICKLE_GLOBALS`."""

    def __init__(self, file, file_name):
        super().__init__(file)
        self.file_name = file_name

    def find_class(self, module, name):
        if (module, name) not in _STATS_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.file_name}: expected feature statistics (plain values and numpy arrays), found a reference "
                f"to {module}.{name}; delete the file to have it recomputed"
            )
        return super().find_class(module, name)


class FeatureStats:
    """Accumulates detector outputs `[n, F]`: all rows (`capture_all`) and/or running sums for mean and covariance.

    The eight attributes set in the constructor (in this order) are exactly what `save` pickles and `load` restores.
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        # Unknown until the first append fixes the width F and allocates the three accumulators.
        self.num_features = None
        self.all_features = None  # list of float32 blocks [n_k, F]
        self.raw_mean = None  # float64 [F]: sum of the rows
        self.raw_cov = None  # float64 [F, F]: sum of the outer products x x^T

    def set_num_features(self, num_features):
        """Fix the feature width on first use (allocating the accumulators); later widths must match it."""
        if self.num_features is None:
            self.num_features = num_features
            self.all_features = []
            self.raw_mean = np.zeros(num_features, dtype=np.float64)
            self.raw_cov = np.zeros((num_features, num_features), dtype=np.float64)
        assert num_features == self.num_features, f"expected {self.num_features} features, got {num_features}"

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def _rows_that_fit(self, rows):
        """The leading rows of `rows` that still fit under `max_items`, or None once full (append is then a no-op)."""
        if self.max_items is None or len(rows) <= self.max_items - self.num_items:
            return rows
        if self.is_full():
            return None
        return rows[: self.max_items - self.num_items]

    def _accumulate_moments(self, rows):
        rows = rows.astype(np.float64)
        self.raw_mean += rows.sum(axis=0)
        self.raw_cov += rows.T @ rows

    def append(self, x):
        """Add rows `x` `[n, F]` (array-like), keeping at most `max_items` rows in total."""
        rows = np.asarray(x, dtype=np.float32)
        assert rows.ndim == 2, f"features must be 2-D [n, F], got shape {list(rows.shape)}"
        rows = self._rows_that_fit(rows)
        if rows is None:
            return

        self.set_num_features(rows.shape[1])
        self.num_items += len(rows)
        if self.capture_all:
            self.all_features.append(rows)
        if self.capture_mean_cov:
            self._accumulate_moments(rows)

    def append_torch(self, x, num_gpus=1, rank=0):
        """Add a torch tensor `[n, F]`; with several processes the rows of all of them are interleaved."""
        assert isinstance(x, torch.Tensor) and x.ndim == 2, "features must be a 2-D torch tensor [n, F]"
        assert 0 <= rank < num_gpus, f"rank must satisfy 0 <= rank < num_gpus, got rank={rank}, num_gpus={num_gpus}"
        per_rank = misc.gather_from_ranks(x, num_gpus)
        # [n, num_gpus, F] -> rows p0[0], p1[0], ..., p0[1], p1[1], ...: the global order of sharded datasets.
        interleaved = torch.stack(per_rank, dim=1).flatten(0, 1)
        self.append(interleaved.detach().cpu().numpy())

    def get_all(self):
        """All captured rows, float32 `[num_items, F]`."""
        assert self.capture_all, "get_all needs capture_all=True"
        return np.concatenate(self.all_features)

    def get_all_torch(self):
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """Mean `[F]` and population covariance `[F, F]` (divisor n), both float64."""
        assert self.capture_mean_cov, "get_mean_cov needs capture_mean_cov=True"
        mean = self.raw_mean / self.num_items
        return mean, self.raw_cov / self.num_items - np.outer(mean, mean)

    def save(self, pkl_file):
        """Pickle the attribute dict (default protocol, the reference's cache format), atomically replacing the file."""
        atomic_pickle(pkl_file, vars(self))

    @staticmethod
    def load(pkl_file):
        """Restore statistics written by `save` (or by the reference); the file may hold only plain data and arrays."""
        with open(pkl_file, "rb") as f:
            state = _StatsUnpickler(f, pkl_file).load()
        expected = list(vars(FeatureStats()))
        if not isinstance(state, dict) or not set(expected) <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{pkl_file}: expected a pickled FeatureStats dict with keys {expected}, found {found}")
        stats = FeatureStats(capture_all=state["capture_all"], max_items=state["max_items"])
        vars(stats).update(state)
        return stats


# ----------------------------------------------------------------------------------------------------------------------
# Progress reporting.


class ProgressMonitor:
    """Reports progress of a long computation: a log line every `flush_interval` items (if `verbose` and tagged),
    a tqdm bar on the console (same condition), and a [pfn_lo, pfn_hi] slice of an external `progress_fn`."""

    def __init__(
        self,
        tag=None,
        num_items=None,
        flush_interval=1000,
        verbose=False,
        progress_fn=None,
        pfn_lo=0,
        pfn_hi=1000,
        pfn_total=1000,
    ):
        self.tag = tag
        self.num_items = num_items
        self.verbose = verbose
        self.flush_interval = flush_interval
        self.progress_fn = progress_fn
        self.pfn_lo = pfn_lo
        self.pfn_hi = pfn_hi
        self.pfn_total = pfn_total
        self.start_time = time.time()
        self.batch_time = self.start_time
        self.batch_items = 0
        self._bar = None
        if self.progress_fn is not None:
            self.progress_fn(self.pfn_lo, self.pfn_total)

    def _update_bar(self, cur_items):
        if not (self.verbose and self.tag is not None and self.num_items is not None):
            return
        if self._bar is None:
            if cur_items >= self.num_items:
                return  # Nothing left to show.
            # The live bar goes to the terminal itself, never into a log file (dnnlib.util.Logger captures
            # sys.stderr), and only when there is a terminal; the lines printed below are what gets logged.
            console = sys.__stderr__
            if console is None or not console.isatty():
                return
            self._bar = tqdm.tqdm(
                total=self.num_items, desc=self.tag, unit="img", leave=False, mininterval=1.0, file=console
            )
        self._bar.update(cur_items - self._bar.n)
        if cur_items >= self.num_items:
            self._bar.close()
            self._bar = None

    def _fraction_point(self, fraction):
        """The point `fraction` of the way through this monitor's [pfn_lo, pfn_hi] slice of the external range."""
        return self.pfn_lo + (self.pfn_hi - self.pfn_lo) * fraction

    def _log_line(self, cur_items, now):
        elapsed = dnnlib.util.format_time(now - self.start_time)
        ms_per_item = (now - self.batch_time) / max(cur_items - self.batch_items, 1) * 1e3
        line = f"{self.tag:<19s} items {cur_items:<7d} time {elapsed:<12s} ms/item {ms_per_item:.2f}"
        # With a live bar on screen, tqdm.write clears it first so that the two do not garble each other.
        write = tqdm.tqdm.write if self._bar is not None else print
        write(line)

    def update(self, cur_items):
        """Record that `cur_items` items are done; reports once per `flush_interval` items and at the end."""
        assert (self.num_items is None) or (cur_items <= self.num_items)
        self._update_bar(cur_items)
        finished = self.num_items is not None and cur_items >= self.num_items
        if not finished and cur_items < self.batch_items + self.flush_interval:
            return
        now = time.time()
        if self.verbose and self.tag is not None:
            self._log_line(cur_items, now)
        self.batch_time, self.batch_items = now, cur_items
        if self.progress_fn is not None and self.num_items is not None:
            self.progress_fn(self._fraction_point(cur_items / self.num_items), self.pfn_total)

    def sub(self, tag=None, num_items=None, flush_interval=1000, rel_lo=0, rel_hi=1):
        """A child monitor (same verbosity and callback) owning the [rel_lo, rel_hi] part of this one's slice."""
        child_slice = dict(pfn_lo=self._fraction_point(rel_lo), pfn_hi=self._fraction_point(rel_hi))
        return ProgressMonitor(
            tag, num_items, flush_interval, self.verbose, self.progress_fn, **child_slice, pfn_total=self.pfn_total
        )


# ----------------------------------------------------------------------------------------------------------------------
# Statistics for real images (cached on disk) and generated images (never cached).


def dataset_stats_cache_key(dataset_kwargs, detector_url, detector_kwargs, stats_kwargs):
    """MD5 hex digest identifying cached dataset statistics; reproduces the reference's file names exactly.

    Note that `max_items` is deliberately absent (reference behaviour): capped and uncapped metrics on the same
    dataset kwargs share one cache file.
    """
    args = dict(
        dataset_kwargs=dataset_kwargs,
        detector_url=detector_url,
        detector_kwargs=detector_kwargs,
        stats_kwargs=stats_kwargs,
    )
    return hashlib.md5(repr(sorted(args.items())).encode("utf-8")).hexdigest()


def _broadcast_flag(flag, opts):
    """Rank 0's boolean, agreed by all processes."""
    if opts.num_gpus == 1:
        return flag
    flag = torch.as_tensor(flag, dtype=torch.float32, device=opts.device)
    torch.distributed.broadcast(tensor=flag, src=0)
    return float(flag.cpu()) != 0


def detector_rgb(images, max_value=255):
    """What every detector sees of an image batch: RGB `[N, 3, H, W]` from `[N, C, H, W]` pixel values.

    C = 1: the channel repeated three times; C = 3: as it is; C = 4 (RGBA): the colour composited over black,
    `rgb * alpha / max_value`, with alpha clamped to [0, max_value] (uint8 input is rounded back to uint8). The
    dtype is kept; 1- and 3-channel values are not touched, so their numbers are the reference's.
    """
    num_channels = images.shape[1]
    if num_channels == 1:
        return images.repeat([1, 3, 1, 1])
    if num_channels == 3:
        return images
    assert num_channels == 4, f"detectors take 1, 3 or 4 (RGBA) channels, got {num_channels}"
    alpha = images[:, 3:].to(torch.float32).clamp(0, max_value) / max_value
    over_black = images[:, :3].to(torch.float32) * alpha
    if images.dtype == torch.uint8:
        return over_black.round().to(torch.uint8)
    return over_black.to(images.dtype)


def _shard_indices(num_items, num_gpus, rank):
    """Dataset indices read by process `rank`, in order: rank, rank + num_gpus, rank + 2*num_gpus, ...

    The stride runs up to the next multiple of num_gpus, wrapping past the end, so that all processes read equally
    many items; the interleaved gather then restores the order 0, 1, 2, ... and max_items cuts off the wrapped ones.
    """
    padded_count = -(-num_items // num_gpus) * num_gpus
    return [index % num_items for index in range(rank, padded_count, num_gpus)]


def compute_feature_stats_for_dataset(
    opts,
    detector_url,
    detector_kwargs,
    rel_lo=0,
    rel_hi=1,
    batch_size=64,
    data_loader_kwargs=None,
    max_items=None,
    **stats_kwargs,
):
    """Detector statistics over dataset items 0 .. min(len, max_items)-1 in order; read from / written to the cache."""
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
    if data_loader_kwargs is None:
        # Pinning only helps (and only works quietly) when copying to a GPU.
        data_loader_kwargs = dict(
            pin_memory=(torch.device(opts.device).type == "cuda"), num_workers=3, prefetch_factor=2
        )

    cache_file = None
    if opts.cache:
        md5 = dataset_stats_cache_key(opts.dataset_kwargs, detector_url, detector_kwargs, stats_kwargs)
        cache_tag = f"{dataset.name}-{get_feature_detector_name(detector_url)}-{md5}"
        cache_file = dnnlib.make_cache_dir_path("gan-metrics", cache_tag + ".pkl")
        flag = os.path.isfile(cache_file) if opts.rank == 0 else False
        if _broadcast_flag(flag, opts):
            return FeatureStats.load(cache_file)

    num_items = len(dataset)
    if max_items is not None:
        num_items = min(num_items, max_items)
    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    progress = opts.progress.sub(tag="dataset features", num_items=num_items, rel_lo=rel_lo, rel_hi=rel_hi)
    detector = get_feature_detector(
        url=detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank, verbose=progress.verbose
    )

    loader = torch.utils.data.DataLoader(
        dataset=dataset,
        sampler=_shard_indices(num_items, opts.num_gpus, opts.rank),
        batch_size=batch_size,
        **data_loader_kwargs,
    )
    for images, _labels in loader:
        images = detector_rgb(images)
        features = detector(images.to(opts.device), **detector_kwargs)
        stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
        progress.update(stats.num_items)

    if cache_file is not None and opts.rank == 0:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        stats.save(cache_file)  # Atomic: a concurrent reader or a killed run never leaves a partial file.
    return stats


def compute_feature_stats_for_generator(
    opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64, batch_gen=None, jit=False, **stats_kwargs
):
    """Detector statistics over exactly `stats_kwargs['max_items']` freshly generated images (ψ = 1, random noise).

    Random draws per detector batch, for each of its `batch_size // batch_gen` generator calls: z from the torch RNG
    on `opts.device`, then the labels from the global numpy RNG (`misc.sample_labels`), then the generator's own noise.
    """
    batch_gen = min(batch_size, 4) if batch_gen is None else batch_gen
    assert batch_size % batch_gen == 0, f"batch_size ({batch_size}) must be divisible by batch_gen ({batch_gen})"
    max_items = stats_kwargs.get("max_items")
    assert max_items is not None, "generated statistics need max_items"

    generator = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    label_source = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)

    def synthesize(z, c):
        """`[batch_gen, z_dim]`, `[batch_gen, c_dim]` -> uint8 images `[batch_gen, C, R, R]`."""
        return generator_to_uint8(generator(z=z, c=c, **opts.G_kwargs))

    if jit:
        example_inputs = [
            torch.zeros([batch_gen, generator.z_dim], device=opts.device),
            torch.zeros([batch_gen, generator.c_dim], device=opts.device),
        ]
        synthesize = torch.jit.trace(synthesize, example_inputs, check_trace=False)

    stats = FeatureStats(**stats_kwargs)
    progress = opts.progress.sub(tag="generator features", num_items=max_items, rel_lo=rel_lo, rel_hi=rel_hi)
    detector = get_feature_detector(
        url=detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank, verbose=progress.verbose
    )

    def generator_call():
        z = torch.randn([batch_gen, generator.z_dim], device=opts.device)  # Drawn before the labels.
        return synthesize(z, misc.sample_labels(label_source, batch_gen, opts.device))

    while not stats.is_full():
        images = torch.cat([generator_call() for _ in range(batch_size // batch_gen)])
        features = detector(detector_rgb(images), **detector_kwargs)
        stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
        progress.update(stats.num_items)
    return stats


# ----------------------------------------------------------------------------------------------------------------------
# What FID, KID, precision/recall and IS share: detector features of the dataset, then of the generator.


@dataclasses.dataclass(frozen=True)
class Capture:
    """What a metric keeps of the detector outputs of one image set, and in which form it reads them.

    `stats_kwargs` are the `FeatureStats` switches; for the dataset they are also part of the statistics cache key,
    so their exact content decides the cache file name. `read` turns the filled statistics into the metric's input.
    """

    stats_kwargs: dict
    read: Callable[[FeatureStats], Any]


ALL_ROWS = Capture(dict(capture_all=True), FeatureStats.get_all)  # float32 numpy [n, F]
MEAN_COV = Capture(dict(capture_mean_cov=True), FeatureStats.get_mean_cov)  # float64 mean [F], covariance [F, F]


def _read_feature_pass(stats_fn, opts, detector_url, detector_kwargs, capture, progress_hi, max_items):
    """`capture.read` of one pass of `stats_fn` (one of the two compute_feature_stats_* functions, looked up by the
    caller at call time so that tests can stand in for them) over progress range 0..progress_hi."""
    stats = stats_fn(
        opts=opts,
        detector_url=detector_url,
        detector_kwargs=detector_kwargs,
        rel_lo=0,
        rel_hi=progress_hi,
        max_items=max_items,
        **capture.stats_kwargs,
    )
    return capture.read(stats)  # The raw statistics are released on return, before any next pass.


def compute_generated_features(opts, detector_url, detector_kwargs, capture, num_gen):
    """`capture.read` of the detector outputs for `num_gen` generated images (progress range 0..1)."""
    return _read_feature_pass(
        compute_feature_stats_for_generator, opts, detector_url, detector_kwargs, capture, 1, num_gen
    )


def compute_real_and_generated_features(opts, detector_url, detector_kwargs, capture, max_real, num_gen):
    """(real, generated): `capture.read` of the detector outputs for the first `max_real` dataset items (None: all),
    then for `num_gen` generated images.

    The dataset pass comes first and owns an empty progress range (0..0: it is usually read from the cache). The
    order matters for the random streams: a dataset pass that is not served from the cache takes its loader seed
    from the torch CPU generator (torch.utils.data does so for every loader iteration) before the generator pass
    draws its first z.
    """
    real = _read_feature_pass(
        compute_feature_stats_for_dataset, opts, detector_url, detector_kwargs, capture, 0, max_real
    )
    return real, compute_generated_features(opts, detector_url, detector_kwargs, capture, num_gen)
