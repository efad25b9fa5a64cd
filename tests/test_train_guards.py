"""train.py's guards of issue 12 and the run-keeping options of issue 14, without training: options that would only
fail once training runs, the run directory, --trust-pickle, --resume=latest|RUN_DIR, a DataLoader worker's
DatasetError, --resume pickles built for other data, and the class names a snapshot records."""

import errno
import os
import pickle
import threading

import pytest
import torch
from test_train import invoke_train, write_image_folder

import dnnlib
import train
from training import config, launcher, networks, resume, training_loop
from training.dataset import DatasetError, ImageFolderDataset


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "data16", count=16, resolution=16)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "labelled", count=4, resolution=16, labels=[0, 1, 0, 1])


def usage_error(**kwargs) -> str:
    with pytest.raises(train.UserError) as info:
        train.setup_training_loop_kwargs(metrics=[], **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# Options that passed the dry run and then failed in training.


def test_batches_that_do_not_fit_the_minibatch_std_groups(data16):
    # The auto preset's D groups 4 images for the minibatch standard deviation; a round of 7 cannot be grouped.
    assert usage_error(data=data16, batch=7) == (
        "--batch=7 gives rounds of 7 images per GPU, which the discriminator's minibatch-std groups of 4 images do "
        "not divide; use a batch per GPU that is a multiple of 4, or --batch-gpu"
    )
    assert usage_error(data=data16, batch=12, batch_gpu=6) == (
        "--batch-gpu=6 does not fit the discriminator's minibatch-std groups of 4 images; use a multiple of 4 "
        "(or at most 4)"
    )
    assert usage_error(data=data16, batch=12, gpus=2).startswith("--batch=12 gives rounds of 6 images per GPU")
    # Rounds of up to one group, or of whole groups, are fine: a smaller round is one group.
    for kwargs in [dict(batch=3), dict(batch=12), dict(batch=12, batch_gpu=3), dict(batch=16, batch_gpu=8)]:
        train.setup_training_loop_kwargs(data=data16, metrics=[], **kwargs)


@pytest.mark.parametrize(
    "option, value", [("kimg", "inf"), ("kimg", "nan"), ("gamma", "inf"), ("gamma", "nan"), ("tick", "inf")]
)
def test_non_finite_numbers_are_usage_errors(data16, tmp_path, no_cuda, option, value):
    result = invoke_train([f"--outdir={tmp_path / 'runs'}", f"--data={data16}", f"--{option}={value}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == f"Error: --{option} must be a finite number, not {value}"
    assert not (tmp_path / "runs").exists()


def test_labels_without_cond_are_reported_in_the_dry_run(labelled, tmp_path, no_cuda):
    warning = (
        f"Warning: {labelled} has labels (dataset.json) but --cond is off: the labels are ignored; give --cond=1 "
        "to train a conditional model."
    )
    result = invoke_train([f"--outdir={tmp_path}", f"--data={labelled}", "-n"])
    assert result.exit_code == 0, result.output
    assert warning in result.stdout.splitlines()
    result = invoke_train([f"--outdir={tmp_path}", f"--data={labelled}", "-n", "--cond=1"])
    assert result.exit_code == 0 and "labels are ignored" not in result.output


# ----------------------------------------------------------------------------------------------------------------------
# The run directory.


def test_a_run_that_loses_the_race_for_a_number_takes_the_next(tmp_path, monkeypatch):
    outdir = str(tmp_path / "runs")
    listed = launcher.next_run_dir

    def competitor_wins(outdir_, desc):
        run_dir = listed(outdir_, desc)
        if run_dir.endswith("00000-x") and not os.path.exists(run_dir):
            os.makedirs(run_dir)  # Another run with the same options starts between the listing and the mkdir.
        return run_dir

    monkeypatch.setattr(launcher, "next_run_dir", competitor_wins)
    assert launcher.create_run_dir(outdir, "x") == os.path.join(outdir, "00001-x")
    monkeypatch.undo()

    # Many runs at once in one --outdir all get a directory of their own.
    made, errors = [], []

    def start():
        try:
            made.append(launcher.create_run_dir(outdir, "desc"))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(made)) == 8


def test_read_only_outdir_is_one_error_line(data16, tmp_path, no_cuda, monkeypatch):
    outdir = tmp_path / "readonly"
    os.makedirs(outdir)
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(outdir)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    result = invoke_train([f"--outdir={outdir}", f"--data={data16}", "--kimg=0.004"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        f"Error: --outdir {outdir}: cannot create the run directory {outdir}/00000-data16-auto1-kimg0.004: "
        "Read-only file system"
    )
    assert "Traceback" not in result.output and os.listdir(outdir) == []


# ----------------------------------------------------------------------------------------------------------------------
# --trust-pickle


def test_trust_pickle_reaches_the_resume_loader(data16, tmp_path, monkeypatch):
    pkl = str(tmp_path / "net.pkl")
    _desc, args = train.setup_training_loop_kwargs(data=data16, resume=pkl, trust_pickle=True)
    assert list(args)[list(args).index("resume_pkl") :][:3] == ["resume_pkl", "ada_kimg", "resume_allow_code"]
    assert args.resume_allow_code is True
    _desc, args = train.setup_training_loop_kwargs(data=data16, resume=pkl)
    assert "resume_allow_code" not in args  # training_options.json keeps its keys unless the flag is given.
    assert usage_error(data=data16, trust_pickle=True) == (
        "--trust-pickle applies to the --resume pickle; give --resume"
    )

    seen = []
    monkeypatch.setattr(resume.pickles, "load_network_from", lambda url, **kw: seen.append((url, kw)) or {})
    for allow_code in (False, True):
        options = training_loop.make_options(device="cpu", resume_pkl=pkl, resume_allow_code=allow_code)
        resume.load(options, log=print)
    assert seen == [(pkl, dict(allow_code=False)), (pkl, dict(allow_code=True))]


# ----------------------------------------------------------------------------------------------------------------------
# --resume=latest and --resume=RUN_DIR


def write_pickle(path, complete: bool = True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = pickle.dumps({"G": None})
    with open(path, "wb") as f:
        f.write(data if complete else data[:-3])


def test_newest_snapshot_is_found_by_run_number_and_progress(tmp_path):
    out = tmp_path / "runs"
    assert resume.newest_snapshot(str(out), whole_outdir=True) == (None, [])
    write_pickle(out / "00000-a" / "network-snapshot-000100.pkl")
    write_pickle(out / "00001-a" / "network-snapshot-000004.pkl")
    write_pickle(out / "00001-a" / "network-snapshot-000012.pkl")
    write_pickle(out / "00001-a" / "network-snapshot-000008.500.pkl")
    write_pickle(out / "00001-a" / "network-snapshot-000012.pkl.x1y2.tmp", complete=False)  # A killed write.
    write_pickle(out / "00002-a" / "network-snapshot-000016.pkl", complete=False)  # Cut short (a copy, say).
    write_pickle(out / "00003-a" / "fakes000020.png")
    write_pickle(out / "notarun" / "network-snapshot-000999.pkl")
    found, passed_over = resume.newest_snapshot(str(out), whole_outdir=True)
    assert found == str(out / "00001-a" / "network-snapshot-000012.pkl")
    assert passed_over == [
        str(out / "00002-a" / "network-snapshot-000016.pkl"),
        str(out / "00001-a" / "network-snapshot-000012.pkl.x1y2.tmp"),
    ]
    assert resume.newest_snapshot(str(out / "00000-a"), whole_outdir=False)[0].endswith("000100.pkl")
    assert resume.newest_snapshot(str(out / "00003-a"), whole_outdir=False) == (None, [])


def test_resume_latest_in_the_dry_run(data16, tmp_path, no_cuda):
    out = tmp_path / "runs"
    result = invoke_train([f"--outdir={out}", f"--data={data16}", "-n", "--resume=latest"])
    assert result.exit_code == 0, result.output
    assert f"--resume=latest: no complete network-snapshot-*.pkl in {out}; starting a new run." in result.stdout
    # A fresh start is a run without --resume: same options, same name, so its snapshots continue exactly.
    assert f"Output directory:   {out}/00000-data16-auto1" in result.stdout
    assert '"resume_pkl"' not in result.stdout and '"ema_rampup": 0.05' in result.stdout

    snapshot = out / "00000-data16-auto1" / "network-snapshot-000004.pkl"
    write_pickle(snapshot)
    write_pickle(out / "00000-data16-auto1" / "network-snapshot-000008.pkl.abc.tmp", complete=False)
    for resume_arg in ["latest", str(out / "00000-data16-auto1")]:
        result = invoke_train([f"--outdir={out}", f"--data={data16}", "-n", f"--resume={resume_arg}"])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert f"--resume={resume_arg}: continuing from {snapshot}" in lines
        assert any(line.startswith(f"--resume={resume_arg}: passing over ") and ".abc.tmp" in line for line in lines)
        assert f'  "resume_pkl": "{snapshot}",' in lines
        assert f"Output directory:   {out}/00001-data16-auto1-resumecustom" in lines
    result = invoke_train([f"--outdir={out}", f"--data={data16}", "-n", f"--resume={tmp_path}"])
    assert f"--resume={tmp_path}: no complete network-snapshot-*.pkl in {tmp_path}; starting a new run." in (
        result.stdout
    )


def _agree_worker(rank: int, init_file: str, runs: str, results: dict):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # Both ranks found the same snapshot; then rank 1 found none (say, its node sees another --outdir).
        for case, start in [("same", "a.pkl"), ("different", "a.pkl" if rank == 0 else None)]:
            try:
                run_dir = launcher._agree_on_run(dnnlib.EasyDict(resume_pkl=start), runs, "desc", True, rank)
                results[case, rank] = run_dir
            except config.UserError as err:
                results[case, rank] = f"UserError: {err}"
    finally:
        torch.distributed.destroy_process_group()


def test_torchrun_ranks_agree_on_the_run_and_its_pickle(tmp_path):
    results = torch.multiprocessing.get_context("spawn").Manager().dict()
    torch.multiprocessing.spawn(_agree_worker, args=(str(tmp_path / "init"), str(tmp_path / "runs"), results), nprocs=2)
    assert results["same", 0] == results["same", 1] == str(tmp_path / "runs" / "00000-desc")
    # Every rank raises the same error, so that none is left waiting for the others.
    expected = "--resume: rank 0 starts from a.pkl but rank 1 from None; every node must see the same --outdir"
    assert results["different", 0] == results["different", 1] == f"UserError: {expected}"


# ----------------------------------------------------------------------------------------------------------------------
# Errors met once training runs.


def test_dataset_error_in_a_loader_worker_keeps_its_one_line(tmp_path):
    folder = write_image_folder(tmp_path / "corrupt", count=2, resolution=16)
    with open(os.path.join(folder, "img000.png"), "rb") as f:
        head = f.read()[:60]
    with open(os.path.join(folder, "zzz.png"), "wb") as f:
        f.write(head)  # Truncated: only the first image, which the dataset probes, decodes.
    dataset = ImageFolderDataset(path=folder)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1)
    batches = iter(loader)
    with pytest.raises(DatasetError) as info:
        for _ in range(len(dataset)):
            training_loop.next_batch(batches)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "zzz.png" in message and "Traceback" not in message, message


def tiny_generator(resolution: int, channels: int) -> networks.Generator:
    return networks.Generator(
        z_dim=8, w_dim=8, c_dim=0, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=128, channel_max=16),
    ).requires_grad_(False)  # fmt: skip


def test_resume_of_a_network_for_other_data_says_what_differs():
    def resume_into(pickled: networks.Generator, ours: networks.Generator):
        lines = []
        source = resume.ResumeSource(path="old.pkl", contents=dict(G=pickled, D=pickled, G_ema=pickled))
        source.copy_weights(dict(G=ours, D=ours, G_ema=ours), lines.append)
        return lines

    lines = resume_into(tiny_generator(32, 3), tiny_generator(16, 3))
    assert lines[-1] == (
        "Warning: --resume old.pkl: the pickle's networks were built for other data (image size 32x32 in the "
        "pickle, 16x16 in this run); only the tensors whose names and shapes match were taken."
    )
    with pytest.raises(resume.ResumeError) as info:
        resume_into(tiny_generator(16, 4), tiny_generator(16, 3))
    assert str(info.value).endswith(
        "in the pickle but [3, 16, 1, 1] in this run; the pickle was trained on other data (image channels 4 in "
        "the pickle, 3 in this run)"
    ), str(info.value)
    assert resume_into(tiny_generator(16, 3), tiny_generator(16, 3)) == ['Resuming from "old.pkl"']


def test_snapshots_record_the_class_names():
    options = dnnlib.EasyDict(training_set_kwargs=dict(path="d"), num_gpus=1)
    modules = dict(G=torch.nn.Linear(1, 1), D=None, G_ema=None, augment_pipe=None)
    snapshot = resume.snapshot_networks(modules, options, class_names=("cat", "dog"))
    assert list(snapshot) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe", "class_names"]
    assert snapshot["class_names"] == ["cat", "dog"] and snapshot["training_set_kwargs"] == {"path": "d"}
    assert "class_names" not in resume.snapshot_networks(modules, options)
