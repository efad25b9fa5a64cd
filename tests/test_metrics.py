"""Metric arithmetic against the reference vectors (tests/data/metrics.npz) plus sanity and bookkeeping checks."""

import io
import json
import os
import pickle
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_vectors

import dnnlib
from metrics import (
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    metric_main,
    metric_utils,
    perceptual_path_length,
    precision_recall,
)

REL_TOL = 1e-5  # vectors README: FID/KID/IS relative error <= 1e-5; precision/recall exact.
CHUNK = 64  # The vectors were accumulated in chunks of 64 rows, like one detector batch.


@pytest.fixture(scope="module")
def vec():
    return load_vectors("metrics.npz")


def cpu_opts():
    return metric_utils.MetricOptions(num_gpus=1, rank=0, device=torch.device("cpu"), cache=False)


def stats_from_array(array, max_items=None, **stats_kwargs):
    """A FeatureStats filled the way the detector loop fills it (64-row chunks, truncated at max_items)."""
    stats = metric_utils.FeatureStats(max_items=max_items if max_items is not None else len(array), **stats_kwargs)
    for start in range(0, len(array), CHUNK):
        stats.append_torch(torch.from_numpy(array[start : start + CHUNK]))
    return stats


class _CallLog(list):
    """(side, detector URL, detector kwargs, rel_lo, rel_hi) per feature pass; `stats_kwargs` alongside."""

    stats_kwargs: list


@pytest.fixture
def fake_detectors(monkeypatch, vec):
    """Replace the two feature-extraction entry points by the stored feature arrays (as the vectors were made)."""
    calls = _CallLog()
    calls.stats_kwargs = []  # Per pass: max_items and the FeatureStats switches (the latter key the cache).

    def for_dataset(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, max_items=None, **stats_kwargs):
        calls.append(("dataset", detector_url, dict(detector_kwargs), rel_lo, rel_hi))
        calls.stats_kwargs.append(dict(stats_kwargs, max_items=max_items))
        return stats_from_array(vec["real_features"], max_items=max_items, **stats_kwargs)

    def for_generator(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, **stats_kwargs):
        calls.append(("generator", detector_url, dict(detector_kwargs), rel_lo, rel_hi))
        calls.stats_kwargs.append(dict(stats_kwargs))
        source = vec["gen_probs"] if detector_kwargs.get("no_output_bias") else vec["gen_features"]
        return stats_from_array(source, **stats_kwargs)

    monkeypatch.setattr(metric_utils, "compute_feature_stats_for_dataset", for_dataset)
    monkeypatch.setattr(metric_utils, "compute_feature_stats_for_generator", for_generator)
    return calls


def assert_rel(actual, expected, name):
    assert isinstance(actual, float), f"{name}: expected a Python float, got {type(actual)}"
    assert abs(actual - expected) <= REL_TOL * abs(expected), f"{name}: {actual!r} vs reference {expected!r}"


# ----------------------------------------------------------------------------------------------------------------------
# Reference vectors through the public compute_* functions.


def test_fid_vectors(vec, fake_detectors):
    assert_rel(frechet_inception_distance.compute_fid(cpu_opts(), max_real=None, num_gen=200), float(vec["fid"]), "fid")
    value = frechet_inception_distance.compute_fid(cpu_opts(), max_real=150, num_gen=120)
    assert_rel(value, float(vec["fid_real150_gen120"]), "fid_real150_gen120")
    inception = metric_utils.INCEPTION_URL
    assert fake_detectors[:2] == [
        ("dataset", inception, {"return_features": True}, 0, 0),
        ("generator", inception, {"return_features": True}, 0, 1),
    ]


def test_kid_vectors_and_draw_order(vec, fake_detectors, monkeypatch):
    np.random.seed(5001)
    value = kernel_inception_distance.compute_kid(
        cpu_opts(), max_real=None, num_gen=200, num_subsets=3, max_subset_size=1000
    )
    assert_rel(value, float(vec["kid_full"]), "kid_full")

    drawn = []
    original_choice = np.random.choice

    def recording_choice(*args, **kwargs):
        drawn.append(original_choice(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(np.random, "choice", recording_choice)
    np.random.seed(5002)
    value = kernel_inception_distance.compute_kid(
        cpu_opts(), max_real=None, num_gen=200, num_subsets=10, max_subset_size=50
    )
    assert_rel(value, float(vec["kid_sub50"]), "kid_sub50")
    assert len(drawn) == 20
    for i, indices in enumerate(drawn):
        np.testing.assert_array_equal(indices, vec[f"kid_sub50.rng{i:03d}"], err_msg=f"draw {i}")


def test_pr_vectors(vec, fake_detectors):
    precision, recall = precision_recall.compute_pr(
        cpu_opts(), max_real=200, num_gen=200, nhood_size=3, row_batch_size=64, col_batch_size=48
    )
    assert precision == float(vec["precision"])
    assert recall == float(vec["recall"])
    assert fake_detectors[0][1] == metric_utils.VGG16_URL


def test_is_vectors(vec, fake_detectors):
    mean, std = inception_score.compute_is(cpu_opts(), num_gen=200, num_splits=10)
    assert_rel(mean, float(vec["is_mean"]), "is_mean")
    assert_rel(std, float(vec["is_std"]), "is_std")
    mean, std = inception_score.compute_is(cpu_opts(), num_gen=150, num_splits=4)
    assert_rel(mean, float(vec["is_gen150_splits4_mean"]), "is_gen150_splits4_mean")
    assert_rel(std, float(vec["is_gen150_splits4_std"]), "is_gen150_splits4_std")
    assert fake_detectors[0][2] == {"no_output_bias": True}


def test_feature_passes_real_then_generated(fake_detectors):
    """Every metric: the dataset pass (progress 0..0) before the generator pass (0..1), with the detector keywords and
    FeatureStats switches that name the reference's cache files; IS has the generator pass alone."""
    inception, vgg16 = metric_utils.INCEPTION_URL, metric_utils.VGG16_URL
    features = {"return_features": True}
    frechet_inception_distance.compute_fid(cpu_opts(), max_real=150, num_gen=120)
    kernel_inception_distance.compute_kid(cpu_opts(), max_real=None, num_gen=100, num_subsets=2, max_subset_size=10)
    precision_recall.compute_pr(cpu_opts(), max_real=80, num_gen=90, nhood_size=3, row_batch_size=64, col_batch_size=64)
    inception_score.compute_is(cpu_opts(), num_gen=70, num_splits=2)
    assert list(fake_detectors) == [
        ("dataset", inception, features, 0, 0),
        ("generator", inception, features, 0, 1),
        ("dataset", inception, features, 0, 0),
        ("generator", inception, features, 0, 1),
        ("dataset", vgg16, features, 0, 0),
        ("generator", vgg16, features, 0, 1),
        ("generator", inception, {"no_output_bias": True}, 0, 1),
    ]
    assert fake_detectors.stats_kwargs == [
        {"capture_mean_cov": True, "max_items": 150},
        {"capture_mean_cov": True, "max_items": 120},
        {"capture_all": True, "max_items": None},
        {"capture_all": True, "max_items": 100},
        {"capture_all": True, "max_items": 80},
        {"capture_all": True, "max_items": 90},
        {"capture_all": True, "max_items": 70},
    ]


def test_pr_features_are_float16_on_the_metric_device(fake_detectors, monkeypatch):
    seen = []

    def recording(real, gen, **kwargs):
        seen.extend([real, gen])
        return 0.0, 0.0

    monkeypatch.setattr(precision_recall, "precision_recall_from_features", recording)
    precision_recall.compute_pr(cpu_opts(), max_real=80, num_gen=90, nhood_size=3, row_batch_size=8, col_batch_size=8)
    assert [(t.dtype, t.device.type, tuple(t.shape)) for t in seen] == [
        (torch.float16, "cpu", (80, 64)),
        (torch.float16, "cpu", (90, 64)),
    ]


def test_math_helpers_match_vectors(vec):
    real, gen = vec["real_features"], vec["gen_features"]
    mu_r, sigma_r = stats_from_array(real, capture_mean_cov=True).get_mean_cov()
    mu_g, sigma_g = stats_from_array(gen, capture_mean_cov=True).get_mean_cov()
    assert_rel(frechet_inception_distance.fid_from_moments(mu_r, sigma_r, mu_g, sigma_g), float(vec["fid"]), "fid")
    np.random.seed(0)  # Full-size subsets: the draws only permute rows.
    assert_rel(kernel_inception_distance.kid_from_features(real, gen, 3, 1000), float(vec["kid_full"]), "kid")
    mean, std = inception_score.is_from_probs(vec["gen_probs"], 10)
    assert_rel(mean, float(vec["is_mean"]), "is_mean")
    precision, recall = precision_recall.precision_recall_from_features(
        torch.from_numpy(real).half(), torch.from_numpy(gen).half(), 3, 10000, 10000
    )
    assert (precision, recall) == (float(vec["precision"]), float(vec["recall"]))


# ----------------------------------------------------------------------------------------------------------------------
# Sanity properties.


def random_features(n=300, f=32, seed=0):
    return np.random.RandomState(seed).randn(n, f).astype(np.float32)


def test_fid_of_identical_sets_is_zero_and_grows_with_shift():
    x = random_features()
    mu, sigma = stats_from_array(x, capture_mean_cov=True).get_mean_cov()
    assert abs(frechet_inception_distance.fid_from_moments(mu, sigma, mu, sigma)) < 1e-6
    values = []
    for shift in [0.1, 0.5, 1.0]:
        mu_s, sigma_s = stats_from_array(x + shift, capture_mean_cov=True).get_mean_cov()
        values.append(frechet_inception_distance.fid_from_moments(mu, sigma, mu_s, sigma_s))
        # A pure shift leaves the covariance alone, so FID is exactly the squared mean distance.
        assert values[-1] == pytest.approx(shift**2 * x.shape[1], rel=1e-6)
    assert values == sorted(values)


def test_kid_of_identical_sets_is_near_zero():
    x = random_features()
    np.random.seed(1)
    same = kernel_inception_distance.kid_from_features(x, x, num_subsets=5, max_subset_size=100)
    other = kernel_inception_distance.kid_from_features(x, x + 1.0, num_subsets=5, max_subset_size=100)
    assert abs(same) < 0.05 * other  # Unbiased estimate: noise around zero, far below a real difference.


def test_pr_of_identical_sets_is_one():
    x = torch.from_numpy(random_features(n=100)).half()
    assert precision_recall.precision_recall_from_features(x, x, 3, 32, 40) == (1.0, 1.0)


def test_compute_distances_chunking_matches_cdist():
    rows = torch.from_numpy(random_features(n=7, f=5, seed=2))
    cols = torch.from_numpy(random_features(n=23, f=5, seed=3))
    dist = precision_recall.compute_distances(rows, cols, num_gpus=1, rank=0, col_batch_size=4)
    assert dist.shape == (7, 23)
    torch.testing.assert_close(dist, torch.cdist(rows, cols), rtol=1e-5, atol=1e-5)


def test_is_of_uniform_and_one_hot_probs():
    uniform = np.full([40, 10], 0.1, dtype=np.float32)
    assert inception_score.is_from_probs(uniform, 4) == pytest.approx((1.0, 0.0), abs=1e-5)
    confident = np.full([40, 10], 1e-7, dtype=np.float32)
    confident[np.arange(40), np.arange(40) % 10] = 1.0
    mean, _ = inception_score.is_from_probs(confident, 4)
    assert mean == pytest.approx(10.0, rel=1e-3)  # Perfectly confident and diverse: IS = number of classes.


def test_ppl_reduction_uses_inclusive_lower_higher_percentiles():
    dist = np.arange(1000, dtype=np.float32)[::-1].copy()
    # n = 1000: lower 1% -> index floor(9.99) = 9; higher 99% -> index ceil(989.01) = 990.
    assert perceptual_path_length.ppl_from_distances(dist) == pytest.approx(np.arange(9, 991).mean())


def test_slerp_endpoints_and_unit_length():
    a, b = torch.randn([2, 3, 16], generator=torch.Generator().manual_seed(0)).unbind(0)
    t = torch.tensor([[0.0], [0.5], [1.0]])
    out = perceptual_path_length.slerp(a, b, t)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out[0], a[0] / a[0].norm(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2], b[2] / b[2].norm(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Bookkeeping: FeatureStats, cache key, progress, registry, report format.


def test_feature_stats_truncation_and_roundtrip(tmp_path):
    x = random_features(n=10, f=4)
    stats = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=7)
    stats.append(x[:5])
    stats.append(x[5:])
    assert stats.is_full() and stats.num_items == 7
    stats.append(x)  # Already full: ignored.
    np.testing.assert_array_equal(stats.get_all(), x[:7])
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(mean, x[:7].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x[:7].astype(np.float64).T, bias=True), rtol=1e-10, atol=1e-12)
    with pytest.raises(AssertionError):
        stats.set_num_features(5)

    stats.save(tmp_path / "s.pkl")
    loaded = metric_utils.FeatureStats.load(tmp_path / "s.pkl")
    assert sorted(loaded.__dict__) == sorted(stats.__dict__)
    np.testing.assert_array_equal(loaded.get_all(), x[:7])
    assert isinstance(loaded.get_all_torch(), torch.Tensor)


def test_stats_cache_file_is_a_plain_pickle_replaced_atomically(tmp_path, monkeypatch):
    """The cache format other tools read: pickle (default protocol) of the attribute dict; never half written."""
    stats = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=3)
    stats.append(random_features(n=5, f=4))
    path = tmp_path / "stats.pkl"
    path.write_bytes(b"previous")
    stats.save(path)
    assert path.read_bytes() == pickle.dumps(vars(stats))
    assert os.listdir(tmp_path) == ["stats.pkl"]

    def failing_dump(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        stats.save(path)
    assert path.read_bytes() == pickle.dumps(vars(stats))  # The earlier file is intact, no temp file is left.
    assert os.listdir(tmp_path) == ["stats.pkl"]


_code_ran = []


def _mark_code_ran():
    _code_ran.append(True)


class _CodeOnLoad:
    def __reduce__(self):
        return (_mark_code_ran, ())


def test_stats_cache_load_runs_no_code_and_reads_numpy1_files(tmp_path):
    stats = metric_utils.FeatureStats(capture_all=True, max_items=4)
    stats.append(random_features(n=4, f=3))
    # The reference (Python 3.7: protocol 3, numpy 1) wrote `numpy.core.multiarray`; protocol 3 spells globals as text.
    numpy1_bytes = pickle.dumps(vars(stats), protocol=3).replace(
        b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"
    )
    assert b"numpy.core.multiarray\n" in numpy1_bytes
    (tmp_path / "numpy1.pkl").write_bytes(numpy1_bytes)
    np.testing.assert_array_equal(metric_utils.FeatureStats.load(tmp_path / "numpy1.pkl").get_all(), stats.get_all())

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(dict(vars(stats), num_items=_CodeOnLoad())))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: expected feature statistics .*_mark_code_ran"):
        metric_utils.FeatureStats.load(tmp_path / "evil.pkl")
    assert _code_ran == []


def test_cache_key_worked_example():
    dataset_kwargs = dict(
        class_name="training.dataset.ImageFolderDataset",
        path="/data/ffhq.zip",
        use_labels=False,
        max_size=None,
        xflip=False,
        resolution=1024,
    )
    args = (metric_utils.INCEPTION_URL, {"return_features": True}, {"capture_mean_cov": True})
    assert metric_utils.dataset_stats_cache_key(dataset_kwargs, *args) == "5e2a165a187adaf062db35e469e27e6a"
    reordered = {key: dataset_kwargs[key] for key in ["class_name", "path", "resolution", "use_labels"]}
    reordered.update(max_size=None, xflip=False)
    assert metric_utils.dataset_stats_cache_key(reordered, *args) == "d054f81270d969dd03d8b52e66e8dfcc"
    assert metric_utils.get_feature_detector_name(metric_utils.INCEPTION_URL) == "inception-2015-12-05"
    assert metric_utils.get_feature_detector_name(metric_utils.VGG16_URL) == "vgg16"


def test_progress_monitor_line_and_callback(capsys):
    reported = []
    parent = metric_utils.ProgressMonitor(verbose=True, progress_fn=lambda cur, total: reported.append((cur, total)))
    child = parent.sub(tag="dataset features", num_items=10, flush_interval=1000, rel_lo=0.5, rel_hi=1)
    child.update(5)  # Below the flush interval and not finished: silent.
    child.update(10)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dataset features")]
    assert len(lines) == 1
    assert lines[0].startswith("dataset features    items 10      time 0s           ms/item ")
    assert reported == [(0, 1000), (500.0, 1000), (1000.0, 1000)]


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_stays_out_of_the_log(tmp_path, monkeypatch, terminal):
    """The live bar is drawn on a terminal only, never into a Logger's file; the log gets the plain lines."""
    console = _FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", console)
    log_path = tmp_path / "log.txt"
    with dnnlib.util.Logger(file_name=str(log_path), file_mode="w", should_flush=True):
        monitor = metric_utils.ProgressMonitor(tag="generator features", num_items=3000, verbose=True)
        for cur in range(500, 3001, 500):
            monitor.update(cur)
    log = log_path.read_text()
    assert "\r" not in log and "img/s" not in log and "it/s" not in log
    lines = [line for line in log.splitlines() if line.startswith("generator features")]
    assert [line.split()[3] for line in lines] == ["1000", "2000", "3000"]
    assert ("generator features" in console.getvalue()) is terminal


def test_metric_options_copies_dataset_kwargs():
    kwargs = dict(path="x", xflip=True)
    opts = metric_utils.MetricOptions(dataset_kwargs=kwargs, device=torch.device("cpu"))
    opts.dataset_kwargs.update(xflip=False)
    assert kwargs == dict(path="x", xflip=True)
    assert not opts.progress.verbose
    with pytest.raises(AssertionError):
        metric_utils.MetricOptions(rank=1, num_gpus=1)


def test_registry_order():
    assert metric_main.list_valid_metrics() == [
        "fid50k_full",
        "kid50k_full",
        "pr50k3_full",
        "ppl2_wend",
        "is50k",
        "fid50k",
        "kid50k",
        "pr50k3",
        "ppl_zfull",
        "ppl_wfull",
        "ppl_zend",
        "ppl_wend",
    ]
    assert metric_main.is_valid_metric("fid50k_full") and not metric_main.is_valid_metric("fid1k")


def _recording_compute(calls, label, value):
    def compute(opts, **kwargs):
        calls.append((label, dict(opts.dataset_kwargs), kwargs))
        return value

    return compute


def test_registered_metrics_constants_and_result_keys(monkeypatch):
    """Each registered metric (also a module attribute of that name): dataset overrides, constants, result keys."""
    calls = []
    for module, name, label, value in [
        (frechet_inception_distance, "compute_fid", "fid", 1.5),
        (kernel_inception_distance, "compute_kid", "kid", 2.5),
        (precision_recall, "compute_pr", "pr", (0.25, 0.75)),
        (inception_score, "compute_is", "is", (3.5, 0.125)),
        (perceptual_path_length, "compute_ppl", "ppl", 4.5),
    ]:
        monkeypatch.setattr(module, name, _recording_compute(calls, label, value))
    results = {}
    for name in metric_main.list_valid_metrics():
        opts = metric_utils.MetricOptions(dataset_kwargs=dict(path="d", max_size=10, xflip=True), device="cpu")
        metric_fn = getattr(metric_main, name)
        assert metric_fn.__name__ == name
        results[name] = metric_fn(opts)

    full = dict(path="d", max_size=None, xflip=False)
    legacy = dict(path="d", max_size=None, xflip=True)
    untouched = dict(path="d", max_size=10, xflip=True)
    n = 50000
    kid_args = dict(num_gen=n, num_subsets=100, max_subset_size=1000)
    pr_args = dict(num_gen=n, nhood_size=3, row_batch_size=10000, col_batch_size=10000)

    def ppl(space, sampling, crop):
        return (
            "ppl",
            untouched,
            dict(num_samples=n, epsilon=1e-4, space=space, sampling=sampling, crop=crop, batch_size=2),
        )

    assert calls == [
        ("fid", full, dict(max_real=None, num_gen=n)),
        ("kid", full, dict(max_real=1000000, **kid_args)),
        ("pr", full, dict(max_real=200000, **pr_args)),
        ppl("w", "end", False),
        ("is", full, dict(num_gen=n, num_splits=10)),
        ("fid", legacy, dict(max_real=50000, num_gen=n)),
        ("kid", legacy, dict(max_real=50000, **kid_args)),
        ("pr", legacy, dict(max_real=50000, **pr_args)),
        ppl("z", "full", True),
        ppl("w", "full", True),
        ppl("z", "end", True),
        ppl("w", "end", True),
    ]
    expected = {
        "fid50k_full": {"fid50k_full": 1.5},
        "kid50k_full": {"kid50k_full": 2.5},
        "pr50k3_full": {"pr50k3_full_precision": 0.25, "pr50k3_full_recall": 0.75},
        "ppl2_wend": {"ppl2_wend": 4.5},
        "is50k": {"is50k_mean": 3.5, "is50k_std": 0.125},
        "fid50k": {"fid50k": 1.5},
        "kid50k": {"kid50k": 2.5},
        "pr50k3": {"pr50k3_precision": 0.25, "pr50k3_recall": 0.75},
        "ppl_zfull": {"ppl_zfull": 4.5},
        "ppl_wfull": {"ppl_wfull": 4.5},
        "ppl_zend": {"ppl_zend": 4.5},
        "ppl_wend": {"ppl_wend": 4.5},
    }
    assert results == expected
    assert [list(keys) for keys in results.values()] == [list(keys) for keys in expected.values()]  # Key order.


def test_calc_metric_summary_keys(monkeypatch):
    monkeypatch.setattr(frechet_inception_distance, "compute_fid", lambda opts, **kwargs: 12.5)
    result = metric_main.calc_metric("fid50k_full", device=torch.device("cpu"))
    assert list(result) == ["results", "metric", "total_time", "total_time_str", "num_gpus"]
    assert result.results == {"fid50k_full": 12.5} and result.metric == "fid50k_full" and result.num_gpus == 1
    assert result.total_time_str == dnnlib.util.format_time(result.total_time)


def test_report_metric_format(tmp_path, capsys):
    result = dnnlib.EasyDict(
        results={"fid50k_full": 4.5}, metric="fid50k_full", total_time=61.0, total_time_str="1m 01s", num_gpus=1
    )
    metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=str(tmp_path / "network-snapshot-000200.pkl"))
    printed = capsys.readouterr().out.strip()
    with open(os.path.join(tmp_path, "metric-fid50k_full.jsonl")) as f:
        written = f.read()
    assert written == printed + "\n"
    record = json.loads(printed)
    assert list(record) == [
        "results",
        "metric",
        "total_time",
        "total_time_str",
        "num_gpus",
        "snapshot_pkl",
        "timestamp",
    ]
    assert record["snapshot_pkl"] == "network-snapshot-000200.pkl"
    assert printed.startswith('{"results": {"fid50k_full": 4.5}, "metric": "fid50k_full", "total_time": 61.0')


def test_missing_detector_error_names_url_and_target(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    url = "https://example.com/x/metrics/some-detector.pt"
    monkeypatch.setattr(metric_utils.dnnlib.util, "open_url", no_network)
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(metric_utils.DETECTOR_DIR_ENV, raising=False)
    with pytest.raises(OSError) as info:
        metric_utils.get_feature_detector(url)
    assert url in str(info.value)
    assert os.path.join(str(tmp_path / "cache"), "detectors", "some-detector.pt") in str(info.value)

    monkeypatch.setenv(metric_utils.DETECTOR_DIR_ENV, str(tmp_path / "mine"))
    with pytest.raises(OSError) as info:
        metric_utils.get_feature_detector(url)
    assert os.path.join(str(tmp_path / "mine"), "some-detector.pt") in str(info.value)


def test_detector_found_in_default_folder_without_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when a local copy exists")

    url = "https://example.com/x/metrics/tiny-detector.pt"
    monkeypatch.setattr(metric_utils.dnnlib.util, "open_url", no_network)
    monkeypatch.setattr(metric_utils, "_feature_detector_cache", dict())
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(metric_utils.DETECTOR_DIR_ENV, raising=False)
    os.makedirs(tmp_path / "detectors")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript is the published format.
        warnings.filterwarnings("ignore", category=FutureWarning)  # (PyTorch 2.14 and later)
        torch.jit.script(torch.nn.Identity()).save(str(tmp_path / "detectors" / "tiny-detector.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Loading the published format warns the user of nothing.
        detector = metric_utils.get_feature_detector(url)
    assert metric_utils.get_feature_detector(url) is detector  # Loaded once per (url, device).
    assert not detector.training


# ----------------------------------------------------------------------------------------------------------------------
# Multi-process gathering, exercised with two CPU processes over Gloo (the same code paths as multi-GPU runs).


def _two_process_worker(rank, init_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # append_torch interleaves the rows of all processes: p0[0], p1[0], p0[1], p1[1], ...
        stats = metric_utils.FeatureStats(capture_all=True, max_items=5)
        stats.append_torch(torch.full([3, 2], float(rank)) + torch.arange(3.0)[:, None] * 10, num_gpus=2, rank=rank)
        np.testing.assert_array_equal(stats.get_all()[:, 0], [0, 1, 10, 11, 20])

        real = torch.from_numpy(random_features(n=50, f=8, seed=4)).half()
        gen = torch.from_numpy(random_features(n=45, f=8, seed=5)).half()
        dist = precision_recall.compute_distances(real[:7], gen, num_gpus=2, rank=rank, col_batch_size=10)
        pr = precision_recall.precision_recall_from_features(real, gen, 3, 16, 10, num_gpus=2, rank=rank)
        if rank == 0:
            expected = precision_recall.compute_distances(real[:7], gen, num_gpus=1, rank=0, col_batch_size=45)
            torch.testing.assert_close(dist, expected, rtol=0, atol=0)
            assert pr == precision_recall.precision_recall_from_features(real, gen, 3, 50, 50)
        else:
            assert dist is None and all(np.isnan(v) for v in pr)

        # calc_metric hands rank 0's numbers to every process (the others computed placeholders).
        @metric_main.register_metric
        def two_rank_probe(opts):
            return dict(first=0.1 if opts.rank == 0 else float("nan"), second=float(7 + opts.rank))

        result = metric_main.calc_metric("two_rank_probe", num_gpus=2, rank=rank, device=torch.device("cpu"))
        assert list(result.results.items()) == [("first", 0.1), ("second", 7.0)]
        assert result.num_gpus == 2
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gather_matches_single_process(tmp_path):
    torch.multiprocessing.start_processes(
        _two_process_worker, args=(str(tmp_path / "init"),), nprocs=2, start_method="fork"
    )


# ----------------------------------------------------------------------------------------------------------------------
# RGBA images (issue 14): the detectors see the RGB channels composited over black, reals and fakes alike.


def test_detector_rgb_composites_rgba_over_black_and_keeps_1_and_3_channels():
    gray = torch.randint(0, 256, [2, 1, 4, 4], dtype=torch.uint8)
    rgb = torch.randint(0, 256, [2, 3, 4, 4], dtype=torch.uint8)
    assert torch.equal(metric_utils.detector_rgb(gray), gray.repeat([1, 3, 1, 1]))
    assert metric_utils.detector_rgb(rgb) is rgb
    alpha = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 4).expand(2, 1, 4, 4)
    out = metric_utils.detector_rgb(torch.cat([rgb, alpha], dim=1))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4, 4)
    expected = (rgb.double() * alpha.double() / 255).round().to(torch.uint8)
    assert torch.equal(out, expected)
    assert (out[..., 0] == 0).all() and torch.equal(out[..., 3], rgb[..., 3])  # transparent -> black, opaque as is
    # Float pixel values (PPL's LPIPS input): alpha clamped to [0, 255], no rounding.
    floats = torch.cat([rgb.float(), torch.full([2, 1, 4, 4], 300.0)], dim=1)
    assert torch.equal(metric_utils.detector_rgb(floats), rgb.float())


class _RecordingDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, img, **kwargs):
        self.inputs.append(img.clone())
        return img.to(torch.float32).flatten(2).mean(2)  # [N, 3]


class _RGBAGenerator(torch.nn.Module):
    """Generator stand-in: constant 4-channel images with a left-to-right alpha ramp from -1 to 1."""

    z_dim, c_dim = 2, 0

    def forward(self, z, c, **kwargs):
        colour = torch.full([z.shape[0], 3, 4, 4], 0.5)
        alpha = torch.linspace(-1, 1, 4).reshape(1, 1, 1, 4).expand(z.shape[0], 1, 4, 4)
        return torch.cat([colour, alpha], dim=1)


def test_feature_passes_composite_rgba_reals_and_fakes(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    rgba = [rng.randint(0, 256, size=[4, 4, 4]).astype(np.uint8) for _ in range(3)]
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i, pixels in enumerate(rgba):
        PIL.Image.fromarray(pixels, "RGBA").save(folder / f"{i}.png")
    detector = _RecordingDetector()
    monkeypatch.setattr(metric_utils, "get_feature_detector", lambda **kwargs: detector)
    opts = metric_utils.MetricOptions(
        G=_RGBAGenerator(),
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path=str(folder)),
        device=torch.device("cpu"),
        cache=False,
    )
    loader_kwargs = dict(num_workers=0)
    metric_utils.compute_feature_stats_for_dataset(opts, "url", {}, data_loader_kwargs=loader_kwargs, capture_all=True)
    (reals,) = detector.inputs
    expected = [metric_utils.detector_rgb(torch.from_numpy(p.transpose(2, 0, 1))[None]) for p in rgba]
    assert torch.equal(reals, torch.cat(expected))
    assert reals.shape == (3, 3, 4, 4) and not torch.equal(
        reals, torch.cat([torch.from_numpy(p.transpose(2, 0, 1)[:3])[None] for p in rgba])
    )

    detector.inputs.clear()
    metric_utils.compute_feature_stats_for_generator(opts, "url", {}, batch_size=4, capture_all=True, max_items=4)
    (fakes,) = detector.inputs
    assert fakes.shape == (4, 3, 4, 4) and fakes.dtype == torch.uint8
    alpha = (torch.linspace(-1, 1, 4) * 127.5 + 128).clamp(0, 255).to(torch.uint8).double()
    colour = int(0.5 * 127.5 + 128)  # the generator's uint8 conversion truncates: 191
    assert torch.equal(fakes[0, 0, 0], (colour * alpha / 255).round().to(torch.uint8))
