"""Starting the processes of a multi-process job on one machine and joining them into a torch.distributed group.

Used by training/launcher.py and calc_metrics.py: one process per GPU (NCCL), or per CPU worker (gloo), with a
file-based rendezvous in a temporary directory, as the reference does. torchrun jobs (env:// rendezvous) are set up
by training/launcher.py.
"""

import contextlib
import os
import tempfile

import torch


def default_device(rank: int = 0) -> torch.device:
    """The device of process `rank`: `cuda:<rank>` when CUDA is available (as the reference assumes), else the CPU."""
    return torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")


class DeviceError(ValueError):
    """A `--device` value that names no usable device; the message is one line naming what was asked for."""


# The values `--device` accepts besides `cuda:N`, the tools' default first.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto | cpu | cuda | cuda:N | mps` -> a device that exists on this machine, else DeviceError.

    `auto` is `default_device()` (CUDA when present, else the CPU). Off CUDA, networks run in float32 with the
    reference ops; the tools' half-precision layers switch themselves off there.
    """
    text = spec.strip().lower()
    if text == "auto":
        return default_device()
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise DeviceError("--device mps: this machine has no Apple MPS device (or this PyTorch build lacks it)")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceError(f"--device {spec}: expected cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: CUDA is not available on this machine (try --device=cpu)")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise DeviceError(f"--device {spec}: expected one of auto, cpu, cuda, cuda:N, mps")


def _file_rendezvous_url(temp_dir: str) -> str:
    """init_method of a rendezvous through a file in temp_dir; Windows file URLs take three slashes."""
    path = os.path.abspath(os.path.join(temp_dir, ".torch_distributed_init"))
    return "file:///" + path.replace("\\", "/") if os.name == "nt" else "file://" + path


@contextlib.contextmanager
def spawned_process_group(rank: int, world_size: int, temp_dir: str, device: torch.device):
    """Join the processes started by `run_processes` for the duration of the block (no group for a single one).

    NCCL connects CUDA devices; gloo serves the CPU and Windows, which has no NCCL.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Before NCCL starts, so that its communicator binds to this GPU.
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" and os.name != "nt" else "gloo"
        url = _file_rendezvous_url(temp_dir)
        torch.distributed.init_process_group(backend=backend, init_method=url, rank=rank, world_size=world_size)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_processes(worker, args, num_processes: int) -> None:
    """Call worker(rank, args, temp_dir) for every rank: in this process when there is one, else in spawned ones."""
    torch.multiprocessing.set_start_method("spawn", force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if num_processes == 1:
            worker(0, args, temp_dir)
        else:
            torch.multiprocessing.spawn(fn=worker, args=(args, temp_dir), nprocs=num_processes)
