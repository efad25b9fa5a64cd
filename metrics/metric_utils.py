"""Shared machinery of the quality metrics: options, feature detectors, feature statistics, progress reporting.

Every metric reduces to "run a pretrained detector network over real and/or generated images and accumulate its
outputs"; this module owns that part so the individual metric modules only contain the final arithmetic.
"""

import copy
import hashlib
import os
import pickle
import time
import uuid
import warnings

import numpy as np
import torch
import tqdm

import dnnlib

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


def default_device(rank=0):
    """The reference always uses `cuda:<rank>`; without CUDA we fall back to the CPU instead of failing."""
    if torch.cuda.is_available():
        return torch.device("cuda", rank)
    return torch.device("cpu")


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
        raise OSError(
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
            # The published detectors are TorchScript archives; newer PyTorch flags that format as deprecated.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            _feature_detector_cache[key] = torch.jit.load(f).eval().to(device)
        if is_leader and num_gpus > 1:
            torch.distributed.barrier()  # Release the waiting processes.
    return _feature_detector_cache[key]


# ----------------------------------------------------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Accumulates detector outputs `[n, F]`: all rows (`capture_all`) and/or running sums for mean and covariance."""

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.all_features = None
        self.raw_mean = None
        self.raw_cov = None

    def set_num_features(self, num_features):
        if self.num_features is not None:
            assert num_features == self.num_features, f"expected {self.num_features} features, got {num_features}"
        else:
            self.num_features = num_features
            self.all_features = []
            self.raw_mean = np.zeros([num_features], dtype=np.float64)
            self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)

    def is_full(self):
        return (self.max_items is not None) and (self.num_items >= self.max_items)

    def append(self, x):
        """Add rows `x` `[n, F]` (array-like), keeping at most `max_items` rows in total."""
        x = np.asarray(x, dtype=np.float32)
        assert x.ndim == 2, f"features must be 2-D [n, F], got shape {list(x.shape)}"
        if (self.max_items is not None) and (self.num_items + x.shape[0] > self.max_items):
            if self.num_items >= self.max_items:
                return
            x = x[: self.max_items - self.num_items]

        self.set_num_features(x.shape[1])
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1, rank=0):
        """Add a torch tensor `[n, F]`; with several processes the rows of all of them are interleaved."""
        assert isinstance(x, torch.Tensor) and x.ndim == 2, "features must be a 2-D torch tensor [n, F]"
        assert 0 <= rank < num_gpus
        if num_gpus > 1:
            gathered = []
            for src in range(num_gpus):
                y = x.clone()
                torch.distributed.broadcast(y, src=src)
                gathered.append(y)
            x = torch.stack(gathered, dim=1).flatten(0, 1)  # [n, G, F] -> row order p0[0], p1[0], ..., p0[1], ...
        self.append(x.detach().cpu().numpy())

    def get_all(self):
        """All captured rows, float32 `[num_items, F]`."""
        assert self.capture_all
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self):
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """Mean `[F]` and population covariance `[F, F]` (divisor n), both float64."""
        assert self.capture_mean_cov
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items
        cov = cov - np.outer(mean, mean)
        return mean, cov

    def save(self, pkl_file):
        with open(pkl_file, "wb") as f:
            pickle.dump(self.__dict__, f)

    @staticmethod
    def load(pkl_file):
        with open(pkl_file, "rb") as f:
            state = dnnlib.EasyDict(pickle.load(f))
        obj = FeatureStats(capture_all=state.capture_all, max_items=state.max_items)
        obj.__dict__.update(state)
        return obj


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
            self._bar = tqdm.tqdm(total=self.num_items, desc=self.tag, unit="img", leave=False, mininterval=1.0)
        self._bar.update(cur_items - self._bar.n)
        if cur_items >= self.num_items:
            self._bar.close()
            self._bar = None

    def update(self, cur_items):
        assert (self.num_items is None) or (cur_items <= self.num_items)
        self._update_bar(cur_items)
        if (cur_items < self.batch_items + self.flush_interval) and (
            self.num_items is None or cur_items < self.num_items
        ):
            return
        cur_time = time.time()
        total_time = cur_time - self.start_time
        time_per_item = (cur_time - self.batch_time) / max(cur_items - self.batch_items, 1)
        if self.verbose and self.tag is not None:
            line = (
                f"{self.tag:<19s} items {cur_items:<7d} time {dnnlib.util.format_time(total_time):<12s} "
                f"ms/item {time_per_item * 1e3:.2f}"
            )
            if self._bar is not None:
                tqdm.tqdm.write(line)  # Clears the live bar first so the two do not garble each other.
            else:
                print(line)
        self.batch_time = cur_time
        self.batch_items = cur_items
        if (self.progress_fn is not None) and (self.num_items is not None):
            self.progress_fn(self.pfn_lo + (self.pfn_hi - self.pfn_lo) * (cur_items / self.num_items), self.pfn_total)

    def sub(self, tag=None, num_items=None, flush_interval=1000, rel_lo=0, rel_hi=1):
        """A child monitor covering the [rel_lo, rel_hi] part of this monitor's progress_fn range."""
        return ProgressMonitor(
            tag=tag,
            num_items=num_items,
            flush_interval=flush_interval,
            verbose=self.verbose,
            progress_fn=self.progress_fn,
            pfn_lo=self.pfn_lo + (self.pfn_hi - self.pfn_lo) * rel_lo,
            pfn_hi=self.pfn_lo + (self.pfn_hi - self.pfn_lo) * rel_hi,
            pfn_total=self.pfn_total,
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


def _tile_gray(images):
    """Detectors expect RGB: repeat a single channel three times. `images`: [N, C, H, W]."""
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    return images


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

    # Every process sees the same number of items; the wrap-around padding is cut off by max_items after the
    # interleaved gather restores the global order.
    num_rounds = (num_items - 1) // opts.num_gpus + 1
    item_subset = [(i * opts.num_gpus + opts.rank) % num_items for i in range(num_rounds)]
    loader = torch.utils.data.DataLoader(
        dataset=dataset, sampler=item_subset, batch_size=batch_size, **data_loader_kwargs
    )
    for images, _labels in loader:
        images = _tile_gray(images)
        features = detector(images.to(opts.device), **detector_kwargs)
        stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
        progress.update(stats.num_items)

    if cache_file is not None and opts.rank == 0:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        temp_file = cache_file + "." + uuid.uuid4().hex
        stats.save(temp_file)
        os.replace(temp_file, cache_file)  # Atomic: concurrent readers never see a partial file.
    return stats


def generated_to_uint8(img):
    """Generator range [-1, 1] -> uint8 [0, 255]: `x*127.5 + 128`, clamped, truncated (= round half up)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def sample_labels(dataset, batch, device):
    """Labels of `batch` random dataset items (global numpy RNG, one `randint` per item) as float32 `[batch, c_dim]`.

    Drawn even for unconditional networks (zero-width labels) so that the numpy RNG stream matches the reference.
    """
    c = [dataset.get_label(np.random.randint(len(dataset))) for _ in range(batch)]
    c = torch.from_numpy(np.stack(c))
    if torch.device(device).type == "cuda":
        c = c.pin_memory()
    return c.to(device)


def compute_feature_stats_for_generator(
    opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64, batch_gen=None, jit=False, **stats_kwargs
):
    """Detector statistics over exactly `stats_kwargs['max_items']` freshly generated images (ψ = 1, random noise)."""
    if batch_gen is None:
        batch_gen = min(batch_size, 4)
    assert batch_size % batch_gen == 0, f"batch_size ({batch_size}) must be divisible by batch_gen ({batch_gen})"
    assert stats_kwargs.get("max_items") is not None, "generated statistics need max_items"

    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)  # Only a source of labels.

    def run_generator(z, c):
        return generated_to_uint8(G(z=z, c=c, **opts.G_kwargs))

    if jit:
        z = torch.zeros([batch_gen, G.z_dim], device=opts.device)
        c = torch.zeros([batch_gen, G.c_dim], device=opts.device)
        run_generator = torch.jit.trace(run_generator, [z, c], check_trace=False)

    stats = FeatureStats(**stats_kwargs)
    assert stats.max_items is not None
    progress = opts.progress.sub(tag="generator features", num_items=stats.max_items, rel_lo=rel_lo, rel_hi=rel_hi)
    detector = get_feature_detector(
        url=detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank, verbose=progress.verbose
    )

    while not stats.is_full():
        images = []
        for _ in range(batch_size // batch_gen):
            z = torch.randn([batch_gen, G.z_dim], device=opts.device)
            c = sample_labels(dataset, batch_gen, opts.device)
            images.append(run_generator(z, c))
        images = _tile_gray(torch.cat(images))
        features = detector(images, **detector_kwargs)
        stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
        progress.update(stats.num_items)
    return stats
