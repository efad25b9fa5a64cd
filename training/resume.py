"""Continuing a training run from a network pickle (`--resume`), and the snapshot pickles a later run resumes from.

Every pickle lends its weights (G, D, G_ema), as in the reference. Our snapshots also carry a `resume_state`
record; when this run's options allow it, the run then continues exactly where the earlier one stopped: its
counters, optimiser states, pl_mean, the ADA statistics not yet used, its data order and every rank's RNG states
(docs/compatibility.md, "Training loop"). The pieces, in the order a run uses them:

    load()                      read the pickle, decide whether the continuation can be exact
    ResumeSource.sampler()      data order: skip the indices the earlier run already used
    ResumeSource.copy_weights() weights, with shape checks (ResumeError)
    ResumeSource.continue_ada() ADA strength reached and statistics not yet used
    ResumeSource.restore()      counters, optimisers, pl_mean, RNG states
    snapshot_networks(), resume_record(), save_snapshot()   what the next --resume reads

`newest_snapshot()` finds the snapshot that `--resume=latest` (or `--resume=RUN_DIR`) continues.
"""

import copy
import dataclasses
import json
import os
import re
import sys

import numpy as np
import torch

import dnnlib
from dnnlib.atomic import atomic_pickle
from torch_utils import misc
from training import networks, pickles

RESUME_STATE_VERSION = 1
# Options that must match for an exact continuation from a snapshot's resume_state: the data order, the network
# and optimiser structure (the optimiser states only fit the same parameters, --freezed included, and would bring
# back their learning rates and betas). Snapshots of older versions recorded only the first five; the others are
# compared when present.
EXACT_RESUME_KEYS = (
    "training_set_kwargs",
    "batch_size",
    "batch_gpu",
    "num_gpus",
    "random_seed",
    "G_kwargs",
    "D_kwargs",
    "G_opt_kwargs",
    "D_opt_kwargs",
    "G_reg_interval",
    "D_reg_interval",
)
# Schedules that train.py resets for transfer learning whenever --resume is given (ema_rampup=None, ada_kimg=100);
# an exact continuation takes them from the snapshot's run instead.
CONTINUED_SCHEDULE_KEYS = ("ema_rampup", "ada_kimg")
# The networks a pickle lends its weights to, and the modules a snapshot holds (the reference's keys, in order).
WEIGHT_SOURCES = ("G", "D", "G_ema")
SNAPSHOT_MODULES = ("G", "D", "G_ema", "augment_pipe")


# network-snapshot-<kimg>.pkl, the kimg with the images within it as decimals when ticks are shorter than a kimg.
SNAPSHOT_NAME = re.compile(r"network-snapshot-(\d+)(?:\.(\d{3}))?\.pkl")
RUN_ID = re.compile(r"\d+")  # The leading number of a run directory's name.
PICKLE_STOP = b"."  # The last byte of every complete pickle.


class ResumeError(ValueError):
    """The --resume pickle does not fit the networks of this run."""


def rng_state(device: torch.device) -> dict:
    """This process's global RNG states: torch's CPU generator, NumPy's, and the CUDA device's when on a GPU."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state())
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def recorded_options(options: dict) -> dict:
    """The EXACT_RESUME_KEYS options as plain JSON values (no EasyDict, lists for tuples), as a snapshot keeps them."""
    return json.loads(json.dumps({key: options[key] for key in EXACT_RESUME_KEYS}))


def _to_cpu(obj):
    """Nested containers with every tensor copied to the CPU (optimiser states may live on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


class SkipSampler(torch.utils.data.Sampler):
    """An infinite sampler with its first `skip` indices dropped, to carry on a run's data order after resume."""

    def __init__(self, sampler, skip: int):
        super().__init__()
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        indices = iter(self.sampler)
        for _ in range(self.skip):
            next(indices)
        yield from indices


def _data_shape(net) -> dict:
    """What a generator is built for: image size (W x H), image channels, label size; None where `net` lacks it."""
    size = None
    if getattr(net, "img_resolution", None) is not None:
        height, width = networks.image_size(net)
        size = f"{width}x{height}"
    return {
        "image size": size,
        "image channels": getattr(net, "img_channels", None),
        "label size": getattr(net, "c_dim", None),
    }


def data_differences(source, net) -> list[str]:
    """What differs between the data that network `source` (from a pickle) and `net` (this run's) are built for,
    e.g. ["image size 32x32 in the pickle, 16x16 in this run"]; what either lacks is not compared."""
    theirs, ours = _data_shape(source), _data_shape(net)
    return [
        f"{what} {theirs[what]} in the pickle, {ours[what]} in this run"
        for what in theirs
        if theirs[what] is not None and ours[what] is not None and theirs[what] != ours[what]
    ]


def _copy_network(source, net: torch.nn.Module, name: str, path: str, log=None, differences=()) -> None:
    """Copy `source`'s tensors into `net` by name; a tensor of another shape is a ResumeError, which names the
    `differences` of the data (see data_differences) as the likely cause. With `log`, say how many of `net`'s
    tensors the pickle did not have (they keep their initial values)."""
    if not isinstance(source, torch.nn.Module):
        raise ResumeError(f"--resume {path}: '{name}' is a {type(source).__name__}, not a network")
    # copy_() would broadcast some mismatched shapes silently and fail cryptically on others.
    source_shapes = {key: tuple(t.shape) for key, t in misc.named_params_and_buffers(source)}
    targets = list(misc.named_params_and_buffers(net))
    for key, tensor in targets:
        if key in source_shapes and source_shapes[key] != tuple(tensor.shape):
            cause = (
                f"the pickle was trained on other data ({'; '.join(differences)})"
                if differences
                else "the network options (--cfg, --cbase, --cmax, --map) or the dataset's labels/channels differ "
                "from the pickle's"
            )
            raise ResumeError(
                f"--resume {path}: {name}.{key} has shape {list(source_shapes[key])} in the pickle but "
                f"{list(tensor.shape)} in this run; {cause}"
            )
    misc.copy_params_and_buffers(source, net, require_all=False)
    missing = [key for key, _ in targets if key not in source_shapes]
    if missing and log is not None:
        log(
            f"  {name}: {len(targets) - len(missing)} of {len(targets)} tensors taken from the pickle; the "
            f"others (e.g. {missing[0]}) keep their initial values."
        )


@dataclasses.dataclass
class ResumeSource:
    """What --resume brings into this run. Without --resume every method leaves the run as it is."""

    path: str | None = None
    contents: dict | None = None  # The pickle's dict: G, D, G_ema, augment_pipe, training_set_kwargs, ...
    state: dict | None = None  # Its resume_state when this run continues it exactly, else None.

    @property
    def exact(self) -> bool:
        return self.state is not None

    def sampler(self, sampler, per_rank_batch: int):
        """The data order: `sampler`, or for an exact continuation `sampler` without the indices already used."""
        if not self.exact:
            return sampler
        return SkipSampler(sampler, skip=self.state["batch_idx"] * per_rank_batch)

    def copy_weights(self, networks: dict[str, torch.nn.Module], log) -> None:
        """Rank 0: take G, D and G_ema from the pickle (the broadcast to the other ranks follows)."""
        if self.contents is None:
            return
        log(f'Resuming from "{self.path}"')
        differences = data_differences(self.contents["G"], networks["G"])
        for name in WEIGHT_SOURCES:
            log_missing = None if self.exact else log
            _copy_network(self.contents[name], networks[name], name, self.path, log_missing, differences)
        if differences:  # After the copies: a shape mismatch has already said it in its error.
            log(
                f"Warning: --resume {self.path}: the pickle's networks were built for other data "
                f"({'; '.join(differences)}); only the tensors whose names and shapes match were taken."
            )

    def copy_weights_again(self, networks: dict[str, torch.nn.Module]) -> None:
        """Rank 0, after the module summaries: their forward pass moved G's w_avg, which an exact continuation
        needs back as it was."""
        if self.exact:
            for name in WEIGHT_SOURCES:
                _copy_network(self.contents[name], networks[name], name, self.path)

    def continue_ada(self, augment_pipe, ada_stats, stat_name: str) -> None:
        """ADA continues from the strength it had reached and counts the statistics its last update had not used
        yet. (A fixed strength, --aug=fixed --p, stays what was asked: then there is no `ada_stats`.)"""
        if not self.exact or ada_stats is None:
            return
        if self.contents.get("augment_pipe") is not None:
            augment_pipe.p.copy_(self.contents["augment_pipe"].p)
        if self.state.get("ada_pending") is not None:
            ada_stats.add_pending(stat_name, self.state["ada_pending"])

    def restore(self, optimizers: dict, pl_mean: torch.Tensor, options: dnnlib.EasyDict, log):
        """For an exact continuation: load the optimiser states, pl_mean and this rank's RNG states, and return the
        counters (cur_nimg, cur_tick, batch_idx) to continue from; otherwise return None."""
        if not self.exact:
            return None
        state = self.state
        for key, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        pl_mean.copy_(torch.as_tensor(state["pl_mean"][options.rank]))
        restore_rng_state(state["rng"][options.rank], options.device)
        log(f"Continuing the earlier run at kimg {state['cur_nimg'] / 1e3:g}, tick {state['cur_tick']}.")
        log()
        return state["cur_nimg"], state["cur_tick"], state["batch_idx"]


def load(options: dnnlib.EasyDict, log) -> ResumeSource:
    """Read options.resume_pkl (every rank) and check its resume_state against `options`. An exact continuation
    also takes the CONTINUED_SCHEDULE_KEYS from the earlier run: `options` is updated in place."""
    if options.resume_pkl is None:
        return ResumeSource()
    is_main, num_gpus = options.rank == 0, options.num_gpus
    # Rank 0 fetches first, so that a URL is downloaded once and the other ranks read the cached copy.
    if num_gpus > 1 and not is_main:
        torch.distributed.barrier()
    # Loaded before the networks are built (its resume_state decides the set-up), so keep the draws that
    # converting a TF-era pickle makes from shifting the networks' initialisation.
    with torch.random.fork_rng(devices=[]):
        contents = pickles.load_network_from(options.resume_pkl, allow_code=options.resume_allow_code)
    if num_gpus > 1 and is_main:
        torch.distributed.barrier()
    state = contents.get("resume_state")
    if state is not None and not _can_continue_exactly(state, options, is_main):
        state = None
    if state is not None:
        for key, value in state.get("schedule", {}).items():
            if options[key] != value:
                log(f"Continuing the earlier run's schedule: {key} = {value} (instead of {options[key]}).")
                options[key] = value
    return ResumeSource(path=options.resume_pkl, contents=contents, state=state)


def _can_continue_exactly(state: dict, options: dict, is_main: bool) -> bool:
    if state.get("version") != RESUME_STATE_VERSION:
        reason = f"its resume_state has version {state.get('version')}, this code writes {RESUME_STATE_VERSION}"
    else:
        saved = state["training_options"]
        current = recorded_options(options)
        differing = [key for key in EXACT_RESUME_KEYS if key in saved and saved[key] != current[key]]
        if not differing:
            return True
        reason = "these options differ from the snapshot's run: " + ", ".join(differing)
    if is_main:
        print(
            f"Warning: cannot continue the earlier run exactly ({reason}); taking only its network weights "
            "and counting from kimg 0.",
            file=sys.stderr,
        )
    return False


# --- finding the newest snapshot ---------------------------------------------------------------------------------


def numbered_run_dirs(outdir: str) -> list[tuple[int, str]]:
    """(leading number, name) of outdir's subdirectories whose name starts with a digit, in no particular order."""
    if not os.path.isdir(outdir):
        return []
    with os.scandir(outdir) as entries:
        numbered = [(RUN_ID.match(entry.name), entry.name) for entry in entries if entry.is_dir()]
    return [(int(match.group()), name) for match, name in numbered if match is not None]


def _is_complete(path: str) -> bool:
    """Whether the file ends as a pickle does. Our snapshots are written atomically, but a copy or a writer other
    than this project's may have been cut short."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) == PICKLE_STOP
    except OSError:
        return False


def _snapshots_in(run_dir: str) -> tuple[list[tuple[int, str]], list[str]]:
    """((images shown, path) of the complete snapshots in run_dir, names of the files passed over: temporary files
    of interrupted writes and snapshots cut short)."""
    found, passed_over = [], []
    for name in sorted(os.listdir(run_dir)):
        match = SNAPSHOT_NAME.fullmatch(name)
        path = os.path.join(run_dir, name)
        if match is not None and _is_complete(path):
            found.append((int(match.group(1)) * 1000 + int(match.group(2) or 0), path))
        elif match is not None or (name.startswith("network-snapshot-") and name.endswith(".tmp")):
            passed_over.append(name)
    return found, passed_over


def newest_snapshot(folder: str, whole_outdir: bool) -> tuple[str | None, list[str]]:
    """The snapshot that --resume=latest (`whole_outdir`: folder is --outdir, every run in it counts) or
    --resume=RUN_DIR continues: the one furthest into training in the highest-numbered run that has any; None if
    there is none. Also returns the paths of the files passed over (see _snapshots_in) in the runs searched.

    Only names and file contents decide, never timestamps, so every process of a job sharing the file system picks
    the same file."""
    if whole_outdir:
        run_dirs = [os.path.join(folder, name) for _run_id, name in sorted(numbered_run_dirs(folder), reverse=True)]
    else:
        run_dirs = [folder]
    passed_over: list[str] = []
    for run_dir in run_dirs:
        found, skipped = _snapshots_in(run_dir)
        passed_over += [os.path.join(run_dir, name) for name in skipped]
        if found:
            return max(found)[1], passed_over
    return None, passed_over


# --- snapshots -------------------------------------------------------------------------------------------------------


def snapshot_networks(modules: dict, options: dnnlib.EasyDict, class_names: list[str] | None = None) -> dict:
    """The reference's snapshot dict: training_set_kwargs, then SNAPSHOT_MODULES as CPU copies in eval mode without
    gradients (None stays None), then `class_names` (the names of the label indices, for generate.py --class) when
    the dataset has them. Collective with several processes: each module is first checked against rank 0's copy
    (w_avg excepted: every rank tracks its own)."""
    snapshot = dict(training_set_kwargs=dict(options.training_set_kwargs))
    for name in SNAPSHOT_MODULES:
        net = modules[name]
        if net is not None:
            if options.num_gpus > 1:
                misc.check_ddp_consistency(net, ignore_regex=r".*\.w_avg")
            net = copy.deepcopy(net).eval().requires_grad_(False).cpu()
        snapshot[name] = net
    if class_names is not None:
        snapshot["class_names"] = [str(name) for name in class_names]
    return snapshot


def resume_record(options, cur_nimg, cur_tick, batch_idx, optimizers: dict, pl_mean, ada_pending) -> dict:
    """What an exact continuation needs beyond the networks, at the end of tick `cur_tick` (collective: every rank
    calls it; pl_mean and the RNG states are gathered from all ranks). `ada_pending` is the moments list of the ADA
    statistic not yet used by an update, or None without ADA."""
    num_gpus = options.num_gpus
    return dict(
        version=RESUME_STATE_VERSION,
        cur_nimg=cur_nimg,
        cur_tick=cur_tick + 1,  # The tick the continuation starts with.
        batch_idx=batch_idx,
        optimizers={key: _to_cpu(opt.state_dict()) for key, opt in optimizers.items()},
        pl_mean=misc.gather_from_ranks(float(pl_mean.cpu()), num_gpus),
        ada_pending=ada_pending,
        rng=misc.gather_from_ranks(rng_state(options.device), num_gpus),
        # Plain JSON values (no EasyDict), so that any code base can unpickle the snapshot.
        training_options=recorded_options(options),
        schedule={key: options[key] for key in CONTINUED_SCHEDULE_KEYS},
    )


def save_snapshot(path: str, snapshot: dict, record: dict) -> None:
    """Pickle the snapshot with its resume_state as the last key, atomically (a crash leaves the old file)."""
    atomic_pickle(path, dict(snapshot, resume_state=record))
