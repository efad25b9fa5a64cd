"""train.py: option building (docs/compatibility.md, "Training options"), errors, --help, --dry-run, run-directory
naming, and one tiny end-to-end CPU run whose every output file is checked (docs/compatibility.md, "Training loop")."""

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT

import dnnlib
import legacy
import train
from training import config, launcher, training_loop

# A tiny but complete configuration: 16x16 data, narrow networks, one iteration of 4 images per tick 0.
TINY_OPTIONS = ["--cbase=256", "--cmax=32", "--map=2", "--batch=4", "--workers=1", "--metrics=none", "--fp32=1"]


def write_image_folder(path, count: int, resolution: int, labels: list | None = None, seed: int = 0) -> str:
    """PNG files img000.png... of random RGB noise, plus dataset.json when `labels` is given."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    for idx in range(count):
        pixels = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(path, f"img{idx:03d}.png"))
    if labels is not None:
        with open(os.path.join(path, "dataset.json"), "w") as f:
            json.dump({"labels": [[f"img{idx:03d}.png", label] for idx, label in enumerate(labels)]}, f)
    return str(path)


def run_train(*args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "data16", count=16, resolution=16)


# ----------------------------------------------------------------------------------------------------------------------
# Options.


def test_run_description_and_key_order(tmp_path):
    data = write_image_folder(tmp_path / "mydata", count=4, resolution=32, labels=[0, 1, 0, 1])
    desc, args = train.setup_training_loop_kwargs(
        data=data,
        cond=True,
        subset=3,
        mirror=True,
        cfg="paper256",
        gamma=0.5,
        kimg=10.0,
        batch=8,
        aug="ada",
        target=0.7,
        augpipe="bgcfnc",
        resume="ffhq256",
        freezed=2,
    )
    assert (
        desc == "mydata-cond-subset3-mirror-paper256-gamma0.5-kimg10-batch8-ada-target0.7-bgcfnc-resumeffhq256-freezed2"
    )
    assert list(args) == [
        "num_gpus", "image_snapshot_ticks", "network_snapshot_ticks", "metrics", "random_seed",
        "training_set_kwargs", "data_loader_kwargs", "G_kwargs", "D_kwargs", "G_opt_kwargs", "D_opt_kwargs",
        "loss_kwargs", "total_kimg", "batch_size", "batch_gpu", "ema_kimg", "ema_rampup",
        "ada_target", "augment_kwargs", "resume_pkl", "ada_kimg",
    ]  # fmt: skip
    assert list(args.training_set_kwargs) == [
        "class_name", "path", "use_labels", "max_size", "xflip", "resolution", "random_seed",
    ]  # fmt: skip
    assert args.training_set_kwargs.max_size == 3 and args.training_set_kwargs.xflip is True
    assert list(args.D_kwargs) == [
        "class_name", "block_kwargs", "mapping_kwargs", "epilogue_kwargs", "channel_base", "channel_max",
        "num_fp16_res", "conv_clamp",
    ]  # fmt: skip
    assert args.D_kwargs.block_kwargs == {"freeze_layers": 2}
    assert args.D_kwargs.epilogue_kwargs.mbstd_group_size == 8 and args.D_kwargs.channel_base == 16384
    assert (args.total_kimg, args.batch_size, args.batch_gpu, args.ema_kimg) == (10, 8, 8, 20)
    assert isinstance(args.total_kimg, int) and args.ema_rampup is None and args.ada_kimg == 100
    assert args.ada_target == 0.7 and args.loss_kwargs.r1_gamma == 0.5
    assert args.resume_pkl == config.RESUME_SPECS["ffhq256"]
    assert args.augment_kwargs.class_name == "training.augment.AugmentPipe"
    assert args.G_opt_kwargs == {"class_name": "torch.optim.Adam", "lr": 0.0025, "betas": [0, 0.99], "eps": 1e-8}


def test_cifar_fixed_and_performance_options(tmp_path):
    data = write_image_folder(tmp_path / "c", count=2, resolution=32)
    desc, args = train.setup_training_loop_kwargs(
        data=data, cfg="cifar", aug="fixed", p=0.25, resume="/x/y.pkl", fp32=True, nhwc=True, nobench=True,
        allow_tf32=True, workers=2, snap=7, seed=5, metrics=[],
    )  # fmt: skip
    assert desc == "c-cifar-fixed-p0.25-resumecustom"
    keys = list(args)
    assert keys[keys.index("ema_rampup") + 1 :] == [
        "augment_p", "augment_kwargs", "resume_pkl", "ada_kimg", "cudnn_benchmark", "allow_tf32",
    ]  # fmt: skip
    assert (args.batch_size, args.batch_gpu, args.ema_kimg, args.ema_rampup) == (64, 32, 500, None)
    assert args.loss_kwargs == {
        "class_name": "training.loss.StyleGAN2Loss", "r1_gamma": 0.01, "pl_weight": 0, "style_mixing_prob": 0,
    }  # fmt: skip
    assert args.D_kwargs.architecture == "orig" and list(args.D_kwargs)[-1] == "architecture"
    assert args.G_kwargs.synthesis_kwargs == {
        "channel_base": 32768, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None, "fp16_channels_last": True,
    }  # fmt: skip
    assert args.D_kwargs.block_kwargs == {"fp16_channels_last": True}
    assert args.D_kwargs.num_fp16_res == 0 and args.D_kwargs.conv_clamp is None
    assert args.data_loader_kwargs == {"pin_memory": True, "num_workers": 2, "prefetch_factor": 2}
    assert (args.image_snapshot_ticks, args.network_snapshot_ticks, args.random_seed) == (7, 7, 5)
    assert args.cudnn_benchmark is False and args.allow_tf32 is True and args.augment_p == 0.25


@pytest.mark.parametrize("cfg, gpus, batch_gpu", [("cifar", 2, 32), ("cifar", 4, 16), ("paper256", 16, 4)])
def test_config_batch_gpu_shrinks_on_more_gpus(tmp_path, cfg, gpus, batch_gpu):
    """A config's batch_gpu (for its reference GPU count) becomes batch/gpus on more GPUs: one round per GPU."""
    data = write_image_folder(tmp_path / "c", count=2, resolution=32)
    _desc, args = train.setup_training_loop_kwargs(data=data, cfg=cfg, gpus=gpus, metrics=[])
    assert (args.batch_size, args.batch_gpu) == (64, batch_gpu)


@pytest.mark.parametrize(
    "res, gpus, mb, gamma, ema, batch_gpu",
    [(32, 1, 32, 0.0064, 10.0, 32), (256, 1, 16, 0.8192, 5.0, 16), (256, 8, 64, 0.2048, 20.0, 8),
     (512, 4, 32, 1.6384, 10.0, 8), (1024, 8, 32, 6.5536, 10.0, 4)],
)  # fmt: skip
def test_auto_config_formulas(tmp_path, res, gpus, mb, gamma, ema, batch_gpu):
    path = tmp_path / f"res{res}"
    os.makedirs(path)
    PIL.Image.fromarray(np.zeros([res, res, 3], dtype=np.uint8)).save(path / "a.png")
    desc, args = train.setup_training_loop_kwargs(data=str(path), gpus=gpus)
    assert desc == f"res{res}-auto{gpus}"
    assert (args.batch_size, args.batch_gpu, args.ema_kimg) == (mb, batch_gpu, ema)
    assert args.loss_kwargs.r1_gamma == pytest.approx(gamma, rel=1e-12)
    assert isinstance(args.ema_kimg, float) and args.ema_rampup == 0.05 and args.total_kimg == 25000
    assert args.D_kwargs.epilogue_kwargs.mbstd_group_size == 4
    assert args.G_kwargs.mapping_kwargs.num_layers == 2 and args.ada_target == 0.6
    assert args.G_kwargs.synthesis_kwargs.channel_base == (32768 if res >= 512 else 16384)
    assert args.G_opt_kwargs.lr == (0.002 if res >= 1024 else 0.0025)


def test_extra_options(tmp_path):
    data = write_image_folder(tmp_path / "d", count=2, resolution=32)
    _desc, args = train.setup_training_loop_kwargs(
        data=data, cbase=1024, cmax=64, map=3, tick=0.5, batch=16, batch_gpu=4, kimg=0.25
    )
    assert args.G_kwargs.synthesis_kwargs.channel_base == args.D_kwargs.channel_base == 1024
    assert args.G_kwargs.synthesis_kwargs.channel_max == args.D_kwargs.channel_max == 64
    assert args.G_kwargs.mapping_kwargs.num_layers == 3
    assert (args.kimg_per_tick, args.batch_size, args.batch_gpu, args.total_kimg) == (0.5, 16, 4, 0.25)
    _desc, args = train.setup_training_loop_kwargs(data=data, tick=2.0, kimg=3.0)
    assert isinstance(args.kimg_per_tick, int) and isinstance(args.total_kimg, int)
    with pytest.raises(train.UserError, match="--batch-gpu must be at least 1 and divide"):
        train.setup_training_loop_kwargs(data=data, batch=16, batch_gpu=3)
    for option, message in [("cbase", "--cbase must be at least 1"), ("cmax", "--cmax must be at least 1"),
                            ("map", "--map must be at least 1"), ("tick", "--tick must be positive")]:  # fmt: skip
        with pytest.raises(train.UserError, match=re.escape(message)):
            train.setup_training_loop_kwargs(data=data, **{option: 0})


def test_every_error_message(tmp_path):
    data = write_image_folder(tmp_path / "d", count=3, resolution=32)
    cases = [
        (dict(gpus=3), "--gpus must be a power of two"),
        (dict(gpus=0), "--gpus must be a power of two"),
        (dict(snap=0), "--snap must be at least 1"),
        (dict(data=str(tmp_path / "missing")), "--data: "),
        (dict(cond=True), "--cond=True requires labels specified in dataset.json"),
        (dict(subset=4), "--subset must be between 1 and 3"),
        (dict(subset=0), "--subset must be between 1 and 3"),
        (dict(gamma=-1.0), "--gamma must be non-negative"),
        (dict(kimg=0.0), "--kimg must be positive"),
        (dict(batch=0), "--batch must be at least 1 and divisible by --gpus"),
        (dict(batch=6, gpus=4), "--batch must be at least 1 and divisible by --gpus"),
        (dict(aug="fixed"), "--aug=fixed requires specifying --p"),
        (dict(p=0.5), "--p can only be specified with --aug=fixed"),
        (dict(aug="fixed", p=1.5), "--p must be between 0 and 1"),
        (dict(aug="noaug", target=0.5), "--target can only be specified with --aug=ada"),
        (dict(target=-0.1), "--target must be between 0 and 1"),
        (dict(aug="noaug", augpipe="bgc"), "--augpipe cannot be specified with --aug=noaug"),
        (dict(freezed=-1), "--freezed must be non-negative"),
        (dict(workers=0), "--workers must be at least 1"),
    ]
    for overrides, message in cases:
        kwargs = {"data": data, **overrides}
        with pytest.raises(train.UserError) as info:
            train.setup_training_loop_kwargs(**kwargs)
        assert str(info.value).startswith(message), (overrides, str(info.value))
    with pytest.raises(train.UserError) as info:
        train.setup_training_loop_kwargs(data=data, metrics=["fid50k_full", "nope"])
    lines = str(info.value).split("\n")
    assert lines[0] == "--metrics can only contain the following values:"
    assert lines[1:] == [
        "fid50k_full", "kid50k_full", "pr50k3_full", "ppl2_wend", "is50k", "fid50k", "kid50k", "pr50k3",
        "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend",
    ]  # fmt: skip


def test_usage_errors_exit_with_status_2(tmp_path, data16):
    result = run_train(f"--outdir={tmp_path}", f"--data={data16}", "--gpus=3", timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-4:] == [
        "Usage: train.py [OPTIONS]",
        "Try 'train.py --help' for help.",
        "",
        "Error: --gpus must be a power of two",
    ]
    result = run_train(f"--outdir={tmp_path}", f"--data={data16}", "--kimg=-1", timeout=60)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == "Error: --kimg must be positive"
    assert os.listdir(tmp_path) == []


def test_help_lists_every_option():
    result = run_train("--help", timeout=60)
    assert result.returncode == 0
    options_text = result.stdout[result.stdout.index("\nOptions:\n") :]
    options = re.findall(r"^  (?:-n, )?(--[a-z0-9-]+)", options_text, flags=re.M)
    expected = (
        "--outdir --gpus --snap --metrics --seed --dry-run --data --cond --subset --mirror --cfg --gamma --kimg "
        "--batch --aug --p --target --augpipe --resume --freezed --fp32 --nhwc --nobench --allow-tf32 --workers "
        "--cbase --cmax --map --tick --batch-gpu --trust-pickle --cpu-fast --help"
    ).split()
    assert options == expected
    for text in ["Where to save the results", "Number of GPUs to use [default: 1]", "Freeze-D [default: 0 layers]",
                 'Comma-separated list or "none"', "Allow PyTorch to use TF32 internally", "-n, --dry-run",
                 "--outdir DIR", "--metrics LIST", "--cond BOOL", "--resume PKL", "--data PATH"]:  # fmt: skip
        assert text in result.stdout, text


def test_dry_run_and_run_directory_naming(tmp_path, data16):
    outdir = tmp_path / "runs"
    os.makedirs(outdir / "00007-foo")
    os.makedirs(outdir / "12bar")
    (outdir / "99file").write_text("files are ignored")
    result = run_train(f"--outdir={outdir}", f"--data={data16}", "--dry-run", timeout=60)
    assert result.returncode == 0, result.stderr
    run_dir = os.path.join(str(outdir), "00013-data16-auto1")
    lines = result.stdout.splitlines()
    if not torch.cuda.is_available():  # On a CPU: float32 and no metrics unless asked for.
        assert lines[0] == (
            "No CUDA device: --fp32 defaults to true and --metrics defaults to none on the CPU; "
            "give the options explicitly to override."
        )
        lines = lines[1:]
    assert lines[:2] == ["", "Training options:"]
    options = json.loads(result.stdout[result.stdout.index("{") : result.stdout.index("\n}\n") + 2])
    assert options["run_dir"] == run_dir
    assert options["metrics"] == ([] if not torch.cuda.is_available() else ["fid50k_full"])
    fp16_res = 0 if not torch.cuda.is_available() else 4
    assert options["G_kwargs"]["synthesis_kwargs"]["num_fp16_res"] == fp16_res
    assert options["D_kwargs"]["num_fp16_res"] == fp16_res
    assert f"Output directory:   {run_dir}" in lines
    for line in [f"Training data:      {data16}", "Training duration:  25000 kimg", "Number of GPUs:     1",
                 "Number of images:   16", "Image resolution:   16", "Conditional model:  False",
                 "Dataset x-flips:    False"]:  # fmt: skip
        assert line in lines
    assert lines[-1] == "Dry run; exiting."
    assert sorted(os.listdir(outdir)) == ["00007-foo", "12bar", "99file"]
    assert launcher.next_run_dir(str(tmp_path / "none-yet"), "x").endswith("00000-x")


# ----------------------------------------------------------------------------------------------------------------------
# End to end.

STATS_KEYS = [
    "Loss/scores/fake", "Loss/signs/fake", "Loss/G/loss", "Loss/pl_penalty", "Loss/G/reg",
    "Loss/scores/real", "Loss/signs/real", "Loss/D/loss", "Loss/r1_penalty", "Loss/D/reg",
    "Progress/tick", "Progress/kimg", "Timing/total_sec", "Timing/sec_per_tick", "Timing/sec_per_kimg",
    "Timing/maintenance_sec", "Resources/cpu_mem_gb", "Resources/peak_gpu_mem_gb", "Progress/augment",
    "Timing/total_hours", "Timing/total_days", "Timing/Gmain", "Timing/Greg", "Timing/Dmain", "Timing/Dreg",
    "timestamp",
]  # fmt: skip


def test_end_to_end_cpu_run(tmp_path, data16):
    # kimg 0.016 with batch 4 and ticks of 0.012 kimg: tick 0 = iteration 1, tick 1 = iterations 2-4 (the ADA
    # update happens after iteration 4).
    outdir = tmp_path / "runs"
    result = run_train(
        f"--outdir={outdir}", f"--data={data16}", "--kimg=0.016", "--tick=0.012", "--snap=1", "--aug=ada",
        *TINY_OPTIONS,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    assert run_name == "00000-data16-auto1-kimg0.016-batch4-ada"
    run_dir = outdir / run_name
    # Ticks shorter than a kimg: the images within the kimg are part of the names, so no snapshot is overwritten.
    assert sorted(os.listdir(run_dir)) == [
        "fakes000000.004.png", "fakes000000.016.png", "fakes_init.png", "log.txt", "network-snapshot-000000.004.pkl",
        "network-snapshot-000000.016.pkl", "reals.png", "stats.jsonl", "training_options.json",
    ]  # fmt: skip

    # training_options.json: the loop kwargs plus kimg_per_tick (from --tick) and run_dir; no trailing newline.
    text = (run_dir / "training_options.json").read_text()
    assert not text.endswith("\n") and text.startswith('{\n  "num_gpus": 1,\n')
    options = json.loads(text)
    assert list(options) == [
        "num_gpus", "image_snapshot_ticks", "network_snapshot_ticks", "metrics", "random_seed",
        "training_set_kwargs", "data_loader_kwargs", "G_kwargs", "D_kwargs", "G_opt_kwargs", "D_opt_kwargs",
        "loss_kwargs", "total_kimg", "batch_size", "batch_gpu", "ema_kimg", "ema_rampup", "ada_target",
        "augment_kwargs", "kimg_per_tick", "run_dir",
    ]  # fmt: skip
    assert options["training_set_kwargs"] == {
        "class_name": "training.dataset.ImageFolderDataset", "path": data16, "use_labels": False, "max_size": 16,
        "xflip": False, "resolution": 16,
    }  # fmt: skip
    assert options["G_kwargs"] == {
        "class_name": "training.networks.Generator", "z_dim": 512, "w_dim": 512, "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 256, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": None},
    }  # fmt: skip
    assert options["data_loader_kwargs"] == {"pin_memory": True, "num_workers": 1, "prefetch_factor": 2}
    assert (options["total_kimg"], options["kimg_per_tick"], options["batch_size"], options["batch_gpu"]) == (
        0.016, 0.012, 4, 4,
    )  # fmt: skip
    assert options["loss_kwargs"] == {"class_name": "training.loss.StyleGAN2Loss", "r1_gamma": 0.0016}
    assert (options["ema_kimg"], options["ema_rampup"], options["ada_target"]) == (10.0, 0.05, 0.6)
    assert options["run_dir"] == str(run_dir)

    # Console: the options block comes before launch and is not in log.txt.
    assert "Training options:" in result.stdout and "Launching processes..." in result.stdout
    log = (run_dir / "log.txt").read_text()
    assert "Training options:" not in log
    expected_order = ["Loading training set...", "Num images:  16", "Image shape: [3, 16, 16]", "Label shape: [0]",
                      "Constructing networks...", "Generator ", "Discriminator ", "Setting up augmentation...",
                      "Distributing across 1 ", "Setting up training phases...", "Exporting sample images...",
                      "Initializing logs...", "Training for 0.016 kimg...", "tick 0     kimg 0.0      time ",
                      "tick 1     kimg 0.0      time ", "Exiting..."]  # fmt: skip
    positions = [log.index(text) for text in expected_order]
    assert positions == sorted(positions)
    tick_lines = [line for line in log.splitlines() if line.startswith("tick ")]
    assert len(tick_lines) == 2
    assert re.fullmatch(
        r"tick 1     kimg 0\.0      time \S+( \S+)?\s* sec/tick [0-9. ]{7} sec/kimg [0-9. ]{7} maintenance [0-9. ]{6} "
        r"cpumem [0-9. ]{6} gpumem 0\.00   augment \d\.\d{3}",
        tick_lines[1],
    ), tick_lines[1]

    # stats.jsonl: one line per tick, keys in first-report order, then the timestamp.
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(list(entry) == STATS_KEYS for entry in stats)
    assert [entry["Progress/tick"]["mean"] for entry in stats] == [0, 1]
    assert stats[1]["Progress/kimg"]["mean"] == float(np.float32(0.016))
    assert stats[0]["Loss/G/loss"]["num"] == 4 and stats[1]["Loss/G/loss"]["num"] == 12
    assert stats[1]["Loss/r1_penalty"] == stats[0]["Loss/r1_penalty"]  # Dreg ran only at iteration 0.
    assert list(stats[0]["Loss/G/loss"]) == ["num", "mean", "std"]

    # Images: 32x32 tiles of 16x16 pixels.
    for name in ["reals.png", "fakes_init.png", "fakes000000.004.png", "fakes000000.016.png"]:
        with PIL.Image.open(run_dir / name) as image:
            assert (image.size, image.mode) == ((512, 512), "RGB"), name

    # Snapshot: the reference's keys (in order) plus our resume_state; loadable by legacy; G_ema generates.
    with open(run_dir / "network-snapshot-000000.016.pkl", "rb") as f:
        raw = pickle.load(f)
    assert list(raw) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe", "resume_state"]
    assert raw["training_set_kwargs"] == options["training_set_kwargs"]
    assert raw["resume_state"]["cur_nimg"] == 16 and raw["resume_state"]["cur_tick"] == 2
    assert float(raw["augment_pipe"].p) == stats[1]["Progress/augment"]["mean"]
    for key in ["G", "D", "G_ema", "augment_pipe"]:
        module = raw[key]
        assert not module.training and not any(param.requires_grad for param in module.parameters())
        assert all(tensor.device.type == "cpu" for tensor in module.state_dict().values())
    with open(run_dir / "network-snapshot-000000.016.pkl", "rb") as f:
        data = legacy.load_network_pkl(f)
    G_ema = data["G_ema"]
    with torch.no_grad():
        image = G_ema(torch.randn([1, G_ema.z_dim]), torch.zeros([1, 0]), noise_mode="const")
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    assert isinstance(dnnlib.EasyDict(data), dict)


def test_errors_after_start_are_one_line(tmp_path, data16):
    """Bad data beyond the first image, or a --resume pickle that does not fit, end with one `Error:` line."""
    corrupt = write_image_folder(tmp_path / "corrupt", count=8, resolution=16)
    with open(os.path.join(corrupt, "zzz.png"), "wb") as f:
        f.write(open(os.path.join(corrupt, "img000.png"), "rb").read()[:60])  # Truncated: only the probe passes.
    result = run_train(f"--outdir={tmp_path / 'a'}", f"--data={corrupt}", "--kimg=0.004", *TINY_OPTIONS)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert re.search(r"Error: --data: .*zzz\.png", output), output[-3000:]

    # A pickle whose networks are wider than this run's (--cmax=16 there, 32 here).
    from training import networks

    shape = dict(c_dim=0, img_resolution=16, img_channels=3)
    channels = dict(channel_base=256, channel_max=16)
    G = networks.Generator(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=channels, **shape)
    D = networks.Discriminator(**shape, **channels)
    narrow = tmp_path / "narrow.pkl"
    with open(narrow, "wb") as f:
        pickle.dump(dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=None), f)
    result = run_train(
        f"--outdir={tmp_path / 'b'}", f"--data={data16}", f"--resume={narrow}", "--kimg=0.004", *TINY_OPTIONS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert re.search(r"Error: --resume .*narrow\.pkl: G\.\S+ has shape \[16.*\] in the pickle but \[32", output), (
        output[-3000:]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume=/no/such/file.pkl"], "Error: --resume: no such file: /no/such/file.pkl"),
        (["--seed=-1"], "Error: --seed must be between 0 and 4294967295"),
    ],
)
def test_paths_and_seed_checked_before_the_run(tmp_path, data16, args, message):
    result = run_train(f"--outdir={tmp_path}", f"--data={data16}", *args, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []


def test_tiny_or_two_channel_images_are_usage_errors(tmp_path):
    tiny = write_image_folder(tmp_path / "tiny", count=2, resolution=4)
    _, err = _usage_error(data=tiny)
    assert err == f"--data: the images of {tiny} are 4x4; training needs at least 8x8"
    gray_alpha = tmp_path / "gray_alpha"
    os.makedirs(gray_alpha)
    for idx in range(2):
        PIL.Image.fromarray(np.zeros([16, 16, 2], np.uint8), mode="LA").save(gray_alpha / f"{idx}.png")
    _, err = _usage_error(data=str(gray_alpha))
    assert err == (
        f"--data: the images of {gray_alpha} have 2 channels; training needs 1 (grayscale), 3 (RGB) or 4 (RGBA)"
    )
    # RGBA trains (issue 14.2): G and D get img_channels=4 from the data.
    rgba = tmp_path / "rgba"
    os.makedirs(rgba)
    for idx in range(2):
        PIL.Image.fromarray(np.zeros([16, 16, 4], np.uint8)).save(rgba / f"{idx}.png")
    _desc, args = train.setup_training_loop_kwargs(data=str(rgba), metrics=[])
    assert args.training_set_kwargs.resolution == 16


def _usage_error(**kwargs):
    with pytest.raises(train.UserError) as info:
        train.setup_training_loop_kwargs(metrics=[], **kwargs)
    return info, str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# The command line: options declared once (training.config.TrainOptions), output unchanged.


@pytest.fixture(scope="module")
def option_data(tmp_path_factory):
    """<root>/data16 (16 RGB images, 16x16), <root>/labelled (8 images with class labels), a custom.pkl and a file."""
    root = tmp_path_factory.mktemp("optdata")
    write_image_folder(root / "data16", count=16, resolution=16)
    write_image_folder(root / "labelled", count=8, resolution=16, labels=[0, 1, 2, 0, 1, 2, 0, 1])
    (root / "custom.pkl").write_bytes(b"not read by a dry run")
    (root / "afile").write_text("not a directory")
    return root


def invoke_train(args: list[str]):
    return CliRunner().invoke(train.main, args, prog_name="train.py", terminal_width=78)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The complete dry-run stdout (CPU note, options JSON, summary, "Dry run; exiting.") as train.py printed it before
# its options were declared in training.config, for these option sets; the first 16 hex digits of its SHA-256, with
# the data folder written as <DATA> and --outdir as <OUT>. The run description names the dataset (data16 or
# labelled). These outputs are a compatibility contract: a mismatch prints the output to compare with
# docs/compatibility.md, "Training options".
DRY_RUN_DIGESTS = [
    ([], "data16-auto1", "5c855b0220ff4d57"),
    (["--cfg=cifar"], "data16-cifar", "d0a43da77c434286"),
    (["--aug=fixed", "--p=0.2"], "data16-auto1-fixed-p0.2", "9428e0b95533bbd3"),
    (["--resume=ffhq256"], "data16-auto1-resumeffhq256", "8109bbaf9bffc45c"),
    (["--resume=<DATA>/custom.pkl"], "data16-auto1-resumecustom", "2b30af0ef17f3336"),
    (["--resume=noresume"], "data16-auto1-noresume", "29e5817c86b05dd1"),
    (["--subset=5"], "data16-subset5-auto1", "e7ce60d3df54035b"),
    (["--mirror=1"], "data16-mirror-auto1", "b8656354dac2fb6b"),
    (["--cond=1"], "labelled-cond-auto1", "7722d233b65189d9"),
    (["--batch=8", "--batch-gpu=2"], "data16-auto1-batch8", "efbd63a62beebec1"),
    (["--tick=0.5"], "data16-auto1", "030601b264231c6a"),
    (["--kimg=0.5"], "data16-auto1-kimg0.5", "70dfaa60ee05ea69"),
    (["--kimg=3"], "data16-auto1-kimg3", "41da57aef167e637"),
    (["--gamma=2.5"], "data16-auto1-gamma2.5", "9a2f837f37fb383c"),
    (["--freezed=3"], "data16-auto1-freezed3", "d566168e96518def"),
    (["--fp32=1", "--nhwc=1", "--nobench=1", "--allow-tf32=1", "--workers=2"], "data16-auto1", "d56837cb29104305"),
    (["--metrics=fid50k_full,kid50k_full"], "data16-auto1", "b0632e38af13b3e5"),
    (["--gpus=2", "--seed=7", "--snap=3"], "data16-auto2", "fac8f56089aba024"),
    (["--aug=noaug"], "data16-auto1-noaug", "4c5fe66272171566"),
    (["--aug=ada", "--target=0.7", "--augpipe=bgcfnc"], "data16-auto1-ada-target0.7-bgcfnc", "4b359fdca7724d45"),
    (["--cbase=1024", "--cmax=64", "--map=3"], "data16-auto1", "31aa6c218667a516"),
    (["--cfg=stylegan2", "--gpus=4"], "data16-stylegan2", "d622d02c318faacc"),
    (
        ["--cond=1", "--subset=5", "--mirror=yes", "--cfg=paper256", "--gamma=0.5", "--kimg=10", "--batch=8",
         "--aug=ada", "--target=0.7", "--augpipe=bgcfnc", "--resume=ffhq256", "--freezed=2", "--cbase=512",
         "--tick=1.5", "--batch-gpu=4", "--workers=1", "--seed=3", "--gpus=2"],
        "labelled-cond-subset5-mirror-paper256-gamma0.5-kimg10-batch8-ada-target0.7-bgcfnc-resumeffhq256-freezed2",
        "cb052857ec600068",
    ),
]  # fmt: skip


@pytest.mark.parametrize("args, desc, digest", DRY_RUN_DIGESTS, ids=[" ".join(case[0]) for case in DRY_RUN_DIGESTS])
def test_dry_run_output_is_unchanged(option_data, tmp_path, no_cuda, args, desc, digest):
    outdir = tmp_path / "runs"
    data = option_data / desc.split("-")[0]
    args = [arg.replace("<DATA>", str(option_data)) for arg in args]
    result = invoke_train([f"--outdir={outdir}", f"--data={data}", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    stdout = result.stdout.replace(str(option_data), "<DATA>").replace(str(outdir), "<OUT>")
    assert f"Output directory:   <OUT>/00000-{desc}" in stdout.splitlines()
    assert _digest(stdout) == digest, stdout
    assert not outdir.exists()


def test_help_is_unchanged():
    """The whole --help text, 78 columns wide as on an 80-column terminal, as before the options were generated
    plus --resume=latest|RUN_DIR, --trust-pickle and --cpu-fast (issues 12, 14, 16)."""
    result = invoke_train(["--help"])
    assert result.exit_code == 0
    assert _digest(result.stdout) == "5c569aaa93880669", result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus=3", "--snap=0", "--kimg=0"], "--gpus must be a power of two"),  # The first check in order wins.
        (["--subset=99", "--gamma=-1"], "--subset must be between 1 and 16"),
        (["--aug=fixed", "--p=2", "--augpipe=bgc", "--freezed=-1"], "--p must be between 0 and 1"),
        (["--freezed=-1", "--workers=0", "--cbase=0"], "--freezed must be non-negative"),
        (["--batch=16", "--batch-gpu=3"], "--batch-gpu must be at least 1 and divide --batch/--gpus (16)"),
        (["--tick=0"], "--tick must be positive"),
        (["--cfg=bad"], "Invalid value for '--cfg': 'bad' is not one of 'auto', 'stylegan2', 'paper256', "
                        "'paper512', 'paper1024', 'cifar'."),
        (["--gpus=abc"], "Invalid value for '--gpus': 'abc' is not a valid integer."),
        (["--cond=maybe"], "Invalid value for '--cond': 'maybe' is not a valid boolean."),
        (["--gamma=x"], "Invalid value for '--gamma': 'x' is not a valid float."),
        (["--outdir=<DATA>/afile"], "--outdir <DATA>/afile exists and is not a directory"),
        (["--resume=/no/such.pkl"], "--resume: no such file: /no/such.pkl"),
    ],
)  # fmt: skip
def test_command_line_errors_are_unchanged(option_data, tmp_path, no_cuda, args, message):
    args = [arg.replace("<DATA>", str(option_data)) for arg in args]
    result = invoke_train([f"--outdir={tmp_path}", f"--data={option_data / 'data16'}", "-n", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.replace(str(option_data), "<DATA>").splitlines()
    assert lines[:3] == ["Usage: train.py [OPTIONS]", "Try 'train.py --help' for help.", ""]
    assert lines[3].startswith(f"Error: {message}") and len(lines) == 4, lines


def test_missing_options_and_torchrun_mismatch(option_data, tmp_path, no_cuda, monkeypatch):
    result = invoke_train([f"--outdir={tmp_path}", "-n"])
    assert result.exit_code == 2 and result.stderr.splitlines()[-1] == "Error: Missing option '--data'."
    result = invoke_train([f"--data={option_data / 'data16'}"])
    assert result.exit_code == 2 and result.stderr.splitlines()[-1] == "Error: Missing option '--outdir'."
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = invoke_train([f"--outdir={tmp_path}", f"--data={option_data / 'data16'}", "-n", "--gpus=4"])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.splitlines()[-1] == "Error: --gpus=4 does not match torchrun's world size 2; leave --gpus out"


def test_click_options_are_the_fields_of_train_options():
    """One declaration per option: the click parameters of train.py are TrainOptions' option fields, in order."""
    assert [param.name for param in train.main.params] == list(config.OPTION_NAMES)
    assert config.OPTION_NAMES[:6] == ("outdir", "gpus", "snap", "metrics", "seed", "dry_run")
    assert "given" not in config.OPTION_NAMES


def test_given_options_come_from_click(option_data, monkeypatch):
    """Which options were given is what click parsed, not which values differ from None or from the default."""
    launched = []
    monkeypatch.setattr(launcher, "launch", launched.append)
    data = str(option_data / "data16")
    result = invoke_train(["--outdir=o", f"--data={data}", "--aug=ada", "--gpus=1", "--metrics=", "-n"])
    assert result.exit_code == 0, result.output
    (options,) = launched
    assert options.given == {"outdir", "data", "aug", "gpus", "metrics", "dry_run"}
    assert (options.aug, options.gpus, options.metrics, options.dry_run) == ("ada", 1, [], True)
    assert (options.cfg, options.workers, options.target, options.resume) == ("auto", 3, 0.6, "noresume")
    assert not options.is_given("cfg") and options.is_given("aug")
    # --aug=ada names the run; leaving --aug out (the same mode) does not.
    assert config.build_training_config(options)[0] == "data16-auto1-ada"
    assert config.build_training_config(config.TrainOptions(data=data))[0] == "data16-auto1"


def test_cpu_defaults_only_for_options_not_given():
    options, notes = config.cpu_defaults(config.TrainOptions(data="d"))
    assert (options.fp32, options.metrics) == (True, [])
    assert notes == ["--fp32 defaults to true", "--metrics defaults to none"]
    given = config.TrainOptions.from_given(dict(data="d", fp32=False, metrics=["kid50k"]))
    options, notes = config.cpu_defaults(given)
    assert (options.fp32, options.metrics, notes, options.given) == (False, ["kid50k"], [], given.given)


def test_programming_errors_are_type_errors(option_data):
    data = str(option_data / "data16")
    with pytest.raises(TypeError, match="gamma must be float, not '1'"):
        config.TrainOptions(data=data, gamma="1")
    with pytest.raises(TypeError, match="cond must be bool, not 1"):
        train.setup_training_loop_kwargs(data=data, cond=1)
    with pytest.raises(TypeError, match="gpus must be int, not True"):
        train.setup_training_loop_kwargs(data=data, gpus=True)
    with pytest.raises(TypeError, match="metrics must be list"):
        train.setup_training_loop_kwargs(data=data, metrics="fid50k_full")
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus"):
        train.setup_training_loop_kwargs(data=data, bogus=1)
    with pytest.raises(TypeError, match="data .* is required"):
        train.setup_training_loop_kwargs(gpus=1)
    with pytest.raises(TypeError, match="given names no option: gama"):
        config.TrainOptions(data=data, given=frozenset({"gama"}))
    with pytest.raises(KeyError, match="gama"):
        config.TrainOptions(data=data).is_given("gama")
    # A float option takes an int, as from a script (stored as given).
    assert train.setup_training_loop_kwargs(data=data, kimg=3, gamma=1)[1].total_kimg == 3


# ----------------------------------------------------------------------------------------------------------------------
# Pieces of the training loop.


@pytest.mark.parametrize(
    "kimg_per_tick, cur_nimg, expected",
    [(4, 4032, "000004"), (1, 999, "000000"), (1.5, 123456, "000123"), (0.25, 252, "000000.252"),
     (0.5, 1000, "000001.000"), (0.012, 16, "000000.016")],
)  # fmt: skip
def test_file_names_carry_fractions_only_for_ticks_under_a_kimg(tmp_path, kimg_per_tick, cur_nimg, expected):
    run = training_loop.TrainingRun(
        training_loop.make_options(device="cpu", run_dir=str(tmp_path), kimg_per_tick=kimg_per_tick)
    )
    run.cur_nimg = cur_nimg
    assert run._kimg_in_names() == expected


def test_nonfinite_gradients_are_reported_with_phase_and_kimg(tmp_path, capsys):
    run = training_loop.TrainingRun(training_loop.make_options(device="cpu", run_dir=str(tmp_path)))
    run.G = torch.nn.Linear(2, 2)
    module = torch.nn.Linear(3, 1)
    module.weight.grad = torch.tensor([[float("nan"), 1.0, float("inf")]])
    module.bias.grad = torch.tensor([0.5])
    counts = torch.zeros([], dtype=torch.int64)
    phase = training_loop._Phase("Dmain", module, None, 1, None, counts)
    params = list(module.parameters())
    phase.nonfinite += training_loop._count_nonfinite_grads(params, torch.device("cpu"))
    training_loop.sync_gradients(params, num_gpus=1)
    assert module.weight.grad.tolist() == [[0.0, 1.0, 1e5]]
    run.phases = [phase]
    run.cur_tick, run.tick_start_nimg, run.cur_nimg = 3, 1000, 1500
    run._check_finite()
    err = capsys.readouterr().err
    assert "1 non-finite gradient tensors in phase Dmain during tick 3 (kimg 1 to 1.5)" in err
    run._check_finite()  # The count was reset: nothing more to report.
    assert capsys.readouterr().err == ""
    with torch.no_grad():
        run.G.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite by kimg 1.5"):
        run._check_finite()


def test_bench_train_speed_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, "bench/train_speed.py", "--res=16", "--cbase=256", "--cmax=32", "--map=2", "--batch=4",
         "--iters=1", "--warmup=1", "--gen-batch=4", "--gen-iters=1", "--workers=1", "--fp32=1", "--device=cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header, rule, row = result.stdout.splitlines()[-3:]
    assert header.split() == ["cfg", "res", "batch", "batch/gpu", "precision", "sec/kimg", "train", "img/s", "peak",
                              "GPU", "GiB", "G", "img/s"]  # fmt: skip
    assert set(rule.replace(" ", "")) == {"-"}
    fields = row.split()
    assert fields[:5] == ["auto", "16", "4", "4", "fp32"] and fields[7] == "-"
    assert float(fields[5]) > 0 and float(fields[6]) > 0 and float(fields[8]) > 0
