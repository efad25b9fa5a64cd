"""End-to-end metric evaluation with stand-in feature detectors, a tiny generator and a tiny PNG dataset.

The stand-in detectors and the command-line driver that shrinks the 50k sample counts live in metrics_helpers.py.
"""

import copy
import io
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT
from metrics_helpers import save_stand_in_detectors, shrunk_driver

import dnnlib
from metrics import metric_utils

pytestmark = pytest.mark.slow

RES = 32
NUM_IMAGES = 12
Z_DIM = 16

# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: detector folder, PNG datasets, snapshot in a fake run directory.


def write_dataset(path, labels=None):
    os.makedirs(path)
    rnd = np.random.RandomState(3)
    names = []
    for i in range(NUM_IMAGES):
        name = f"img{i:04d}.png"
        PIL.Image.fromarray(rnd.randint(0, 256, size=[RES, RES, 3], dtype=np.uint8)).save(os.path.join(path, name))
        names.append(name)
    if labels is not None:
        with open(os.path.join(path, "dataset.json"), "w") as f:
            json.dump({"labels": [[name, int(label)] for name, label in zip(names, labels)]}, f)


def tiny_generator(c_dim=0):
    from training import networks

    torch.manual_seed(0)
    return networks.Generator(
        z_dim=Z_DIM,
        c_dim=c_dim,
        w_dim=16,
        img_resolution=RES,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=16),
    ).eval()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("calc_metrics")
    detector_dir = save_stand_in_detectors(str(root / "detectors"))

    data_dir = str(root / "tinyset")
    write_dataset(data_dir)
    labeled_dir = str(root / "labeled")
    write_dataset(labeled_dir, labels=np.arange(NUM_IMAGES) % 3)
    return dnnlib.EasyDict(root=str(root), detector_dir=detector_dir, data_dir=data_dir, labeled_dir=labeled_dir)


@pytest.fixture
def detectors(env, monkeypatch):
    monkeypatch.setenv(metric_utils.DETECTOR_DIR_ENV, env.detector_dir)
    monkeypatch.setattr(metric_utils, "_feature_detector_cache", dict())
    monkeypatch.setenv("DNNLIB_CACHE_DIR", os.path.join(env.root, "inprocess-cache"))


def cpu_opts(G, dataset_kwargs, cache=False):
    return metric_utils.MetricOptions(G=G, dataset_kwargs=dataset_kwargs, device=torch.device("cpu"), cache=cache)


# ----------------------------------------------------------------------------------------------------------------------
# Python API.


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers is the reference default.
def test_dataset_stats_order_xflip_and_cache(env, detectors):
    from training.dataset import ImageFolderDataset

    dataset_kwargs = dnnlib.EasyDict(
        class_name="training.dataset.ImageFolderDataset", path=env.data_dir, use_labels=False, xflip=True
    )
    url, detector_kwargs = metric_utils.INCEPTION_URL, dict(return_features=True)
    opts = cpu_opts(None, dataset_kwargs, cache=True)
    # Default loader options (3 worker processes), batches of 8 so that several batches are gathered.
    stats = metric_utils.compute_feature_stats_for_dataset(
        opts, url, detector_kwargs, batch_size=8, max_items=20, capture_all=True
    )
    assert stats.num_items == 20

    # Items 0..19 in dataset order: the 12 originals, then mirrored copies of the first 8.
    dataset = ImageFolderDataset(path=env.data_dir, xflip=True)
    images = torch.from_numpy(np.stack([dataset[i][0] for i in range(20)]))
    torch.testing.assert_close(images[12], images[0].flip(-1))
    detector = metric_utils.get_feature_detector(url)
    torch.testing.assert_close(stats.get_all_torch(), detector(images, return_features=True))

    md5 = metric_utils.dataset_stats_cache_key(dataset_kwargs, url, detector_kwargs, dict(capture_all=True))
    cache_file = os.path.join(env.root, "inprocess-cache", "gan-metrics", f"tinyset-inception-2015-12-05-{md5}.pkl")
    assert os.path.isfile(cache_file)
    # max_items is not part of the key (reference quirk): a smaller request gets the cached 20 rows back.
    again = metric_utils.compute_feature_stats_for_dataset(opts, url, detector_kwargs, max_items=5, capture_all=True)
    assert again.num_items == 20
    np.testing.assert_array_equal(again.get_all(), stats.get_all())


def test_generator_stats_follow_reference_draw_order(env, detectors):
    G = tiny_generator(c_dim=3)
    dataset_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path=env.labeled_dir, use_labels=True)
    url = metric_utils.INCEPTION_URL
    torch.manual_seed(123)
    np.random.seed(7)
    stats = metric_utils.compute_feature_stats_for_generator(
        cpu_opts(G, dataset_kwargs), url, dict(return_features=True), capture_all=True, max_items=70
    )
    assert stats.num_items == 70  # Two rounds of 64, the second truncated.

    # Replay: per 4-image call, z from torch first, then 4 numpy label draws; 16 calls per detector batch.
    torch.manual_seed(123)
    np.random.seed(7)
    G_copy = copy.deepcopy(G).eval().requires_grad_(False)
    detector = metric_utils.get_feature_detector(url)
    expected = []
    for _round in range(2):
        batch = []
        for _call in range(16):
            z = torch.randn([4, Z_DIM])
            c = torch.nn.functional.one_hot(torch.tensor([np.random.randint(NUM_IMAGES) % 3 for _ in range(4)]), 3)
            img = G_copy(z=z, c=c.to(torch.float32))
            batch.append((img * 127.5 + 128).clamp(0, 255).to(torch.uint8))
        expected.append(detector(torch.cat(batch), return_features=True))
    torch.testing.assert_close(stats.get_all_torch(), torch.cat(expected)[:70])


def test_ppl_api_small(env, detectors):
    from metrics import perceptual_path_length

    G = tiny_generator()
    dataset_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path=env.data_dir)
    torch.manual_seed(5)
    np.random.seed(5)
    value = perceptual_path_length.compute_ppl(
        cpu_opts(G, dataset_kwargs), num_samples=10, epsilon=1e-4, space="z", sampling="full", crop=True, batch_size=2
    )
    assert math.isfinite(value) and value > 0


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def run_cli(env, *args, shrink=True):
    cmd = [sys.executable, "-c", shrunk_driver("calc_metrics.py")] if shrink else [sys.executable, "calc_metrics.py"]
    child_env = dict(
        os.environ,
        DNNLIB_CACHE_DIR=os.path.join(env.root, "cli-cache"),
        STYLEGAN_DETECTOR_DIR=env.detector_dir,
        PYTHONPATH=REPO_ROOT,
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(cmd + list(args), cwd=REPO_ROOT, env=child_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def snapshot(env):
    from training import networks

    run_dir = os.path.join(env.root, "00000-run")
    os.makedirs(run_dir)
    G = tiny_generator()
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=128, channel_max=16)
    training_set_kwargs = dict(
        class_name="training.dataset.ImageFolderDataset",
        path=env.data_dir,
        use_labels=False,
        max_size=None,
        xflip=False,
        resolution=RES,
    )
    pkl = os.path.join(run_dir, "network-snapshot-000000.pkl")
    with open(pkl, "wb") as f:
        pickle.dump(
            dict(training_set_kwargs=training_set_kwargs, G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=None), f
        )
    with open(os.path.join(run_dir, "training_options.json"), "w") as f:
        json.dump(dict(training_set_kwargs=training_set_kwargs, run_dir=run_dir), f, indent=2)
    return dnnlib.EasyDict(run_dir=run_dir, pkl=pkl, training_set_kwargs=training_set_kwargs)


def read_jsonl(run_dir, metric):
    with open(os.path.join(run_dir, f"metric-{metric}.jsonl")) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_cli_all_primary_metrics_then_cache_hit(env, snapshot):
    metrics = ["fid50k_full", "kid50k_full", "pr50k3_full", "is50k", "ppl2_wend"]
    proc = run_cli(env, f"--network={snapshot.pkl}", f"--metrics={','.join(metrics)}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dataset features" in proc.stdout  # Real statistics were computed this time.

    expected_keys = dict(
        fid50k_full=["fid50k_full"],
        kid50k_full=["kid50k_full"],
        pr50k3_full=["pr50k3_full_precision", "pr50k3_full_recall"],
        is50k=["is50k_mean", "is50k_std"],
        ppl2_wend=["ppl2_wend"],
    )
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"results"')]
    assert [record["metric"] for record in printed] == metrics
    for metric in metrics:
        [record] = read_jsonl(snapshot.run_dir, metric)
        assert list(record) == ["results", "metric", "total_time", "total_time_str", "num_gpus"] + [
            "snapshot_pkl",
            "timestamp",
        ]
        assert list(record["results"]) == expected_keys[metric]
        assert all(math.isfinite(v) for v in record["results"].values()), record
        assert record["snapshot_pkl"] == "network-snapshot-000000.pkl"
        assert record["num_gpus"] == 1
    for key in expected_keys["pr50k3_full"]:
        assert 0 <= read_jsonl(snapshot.run_dir, "pr50k3_full")[0]["results"][key] <= 1

    # Cache files carry the reference's names: <dataset>-<detector>-<md5 of the four-entry key>.pkl.
    dataset_kwargs = dict(snapshot.training_set_kwargs, resolution=RES, use_labels=False, max_size=None, xflip=False)
    cache_dir = os.path.join(env.root, "cli-cache", "gan-metrics")
    expected_files = set()
    for url, det_kwargs, stats_kwargs in [
        (metric_utils.INCEPTION_URL, dict(return_features=True), dict(capture_mean_cov=True)),
        (metric_utils.INCEPTION_URL, dict(return_features=True), dict(capture_all=True)),
        (metric_utils.VGG16_URL, dict(return_features=True), dict(capture_all=True)),
    ]:
        md5 = metric_utils.dataset_stats_cache_key(dataset_kwargs, url, det_kwargs, stats_kwargs)
        expected_files.add(f"tinyset-{metric_utils.get_feature_detector_name(url)}-{md5}.pkl")
    assert set(os.listdir(cache_dir)) == expected_files
    mtimes = {name: os.path.getmtime(os.path.join(cache_dir, name)) for name in expected_files}

    # Second run (KID: cheaper than FID's 2048x2048 matrix square root): the real statistics come from the cache
    # and the JSONL file grows by one line.
    proc = run_cli(env, f"--network={snapshot.pkl}", "--metrics=kid50k_full")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dataset features" not in proc.stdout
    assert "generator features" in proc.stdout
    assert {name: os.path.getmtime(os.path.join(cache_dir, name)) for name in expected_files} == mtimes
    assert len(read_jsonl(snapshot.run_dir, "kid50k_full")) == 2


def test_cli_rejects_unknown_metric(env, snapshot):
    proc = run_cli(env, f"--network={snapshot.pkl}", "--metrics=fid50k_full,fid1k", shrink=False)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr  # The CLI's logger routes stderr text to stdout.
    assert "--metrics can only contain the following values:\nfid50k_full\nkid50k_full\n" in output
    assert "Loading network" not in output  # Validation happens before anything is loaded.


def test_cli_dataset_and_pickle_problems_are_one_line_errors(env, snapshot, tmp_path):
    def fails(*args, status):
        proc = run_cli(env, *args, "--metrics=kid50k_full", shrink=False)
        output = proc.stdout + proc.stderr  # The CLI's logger routes stderr text to stdout.
        assert proc.returncode == status and "Traceback" not in output, output[-3000:]
        return output

    # A dataset of another resolution than the network.
    small = str(tmp_path / "small")
    os.makedirs(small)
    for idx in range(2):
        PIL.Image.fromarray(np.zeros([16, 16, 3], np.uint8)).save(os.path.join(small, f"{idx}.png"))
    assert "Error: --data: " in fails(f"--network={snapshot.pkl}", f"--data={small}", status=2)

    # The dataset recorded in the pickle has moved away.
    moved = dict(snapshot.training_set_kwargs, path=str(tmp_path / "gone"))
    pkl = tmp_path / "moved.pkl"
    with open(snapshot.pkl, "rb") as f:
        data = pickle.load(f)
    with open(pkl, "wb") as f:
        pickle.dump(dict(data, training_set_kwargs=moved), f)
    assert "Error: --data (recorded in the pickle): " in fails(f"--network={pkl}", status=2)

    # A conditional network with unlabelled images.
    cond_pkl = tmp_path / "cond.pkl"
    with open(cond_pkl, "wb") as f:
        pickle.dump(dict(data, G_ema=tiny_generator(c_dim=3), training_set_kwargs=None), f)
    output = fails(f"--network={cond_pkl}", f"--data={env.data_dir}", status=2)
    assert f"the network is conditional with 3 classes, but {env.data_dir} has no labels" in output

    # Not a pickle at all.
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"")
    assert "Error: --network: " in fails(f"--network={junk}", status=1)


def test_network_loading_errors_name_the_option_and_the_file(tmp_path, monkeypatch):
    """The same loader and error mapping as the image tools, with the messages prefixed by `--network: `."""
    import click

    import calc_metrics

    def message(network):
        with pytest.raises(click.ClickException) as info:
            calc_metrics._load_network(str(network), verbose=False)
        return info.value.format_message()

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    assert message(empty) == f"--network: {empty}: not a network pickle (file is empty)"
    assert message(tmp_path).startswith(f"--network: Cannot read network pickle {tmp_path}: [Errno")
    url = "https://example.invalid/net.pkl"
    monkeypatch.setattr(dnnlib.util, "open_url", lambda *args, **kwargs: io.BytesIO(b"\x80\x04"))
    assert message(url) == f"--network: {url}: not a network pickle (truncated)"


# ----------------------------------------------------------------------------------------------------------------------
# --device, --trust-pickle and failures inside spawned processes.


def test_cli_worker_failure_with_several_processes_is_one_line(env, snapshot, tmp_path):
    """With --gpus=2 (two CPU processes here) a failing worker gives one Error line, not its traceback."""
    broken = tmp_path / "detectors"
    broken.mkdir()
    (broken / "inception-2015-12-05.pt").write_bytes(b"not a TorchScript archive")
    proc = run_cli(
        dnnlib.EasyDict(env, detector_dir=str(broken)),
        f"--network={snapshot.pkl}",
        "--metrics=kid50k_full",
        "--gpus=2",
        "--device=cpu",
        "--verbose=false",
        shrink=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: --gpus=2: process 0 failed: RuntimeError: "), output


def test_cli_device_options(env, snapshot):
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        proc = run_cli(env, f"--network={snapshot.pkl}", "--metrics=kid50k_full", "--device=mps", shrink=False)
        assert proc.returncode == 1
        output = proc.stdout + proc.stderr
        assert "Error: --device mps: this machine has no Apple MPS device" in output
        assert "Loading network" not in output and "Traceback" not in output
    proc = run_cli(env, f"--network={snapshot.pkl}", "--metrics=kid50k_full", "--gpus=2", "--device=cuda:0",
                   shrink=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    if torch.cuda.is_available():
        assert proc.returncode == 2 and "--device cuda:0 names one GPU; with --gpus=2 use --device=cuda" in output
    else:
        assert proc.returncode == 1 and "Error: --device cuda:0: CUDA is not available on this machine" in output


def test_device_per_rank_and_trust_pickle(tmp_path, monkeypatch):
    import calc_metrics

    assert calc_metrics.rank_device(torch.device("cpu"), 1, 2) == torch.device("cpu")
    assert calc_metrics.rank_device(torch.device("cuda", 0), 1, 2) == torch.device("cuda", 1)
    assert calc_metrics.rank_device(torch.device("cuda", 3), 0, 1) == torch.device("cuda", 3)

    from training import pickles

    calls = []

    def fake_load(url, **kwargs):
        calls.append(kwargs.get("allow_code"))
        return dict(G_ema=tiny_generator(), training_set_kwargs=None)

    monkeypatch.setattr(pickles, "load_network_from", fake_load)
    calc_metrics._load_network("x.pkl", verbose=False)
    calc_metrics._load_network("x.pkl", verbose=False, trust_pickle=True)
    assert calls == [False, True]


def test_cli_cpu_device_and_trust_pickle_flag(env, snapshot):
    proc = run_cli(env, f"--network={snapshot.pkl}", "--metrics=kid50k_full", "--device=cpu", "--trust-pickle")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"results"')]
    assert [record["metric"] for record in printed] == ["kid50k_full"]
