"""Latent walks through keyframes, rendered as grids of cells, for interpolation videos (gen_video.py, sefa.py).

A walk visits K keyframes (z or w latents) with `w_frames` frames per step from one keyframe to the next. It loops
back to the first keyframe (K * w_frames frames, the last frame one step before the first) or stops on the last one
((K - 1) * w_frames + 1 frames). `cubic` easing follows a cubic spline through the keyframes; a looping spline is
fitted to the keyframes tiled five times (positions -2K .. 3K - 1), as NVIDIA's gen_video.py does, so that the seam
at the loop point is smooth. `linear` easing moves along straight lines between consecutive keyframes.

Frames go to an mp4 (imageio-ffmpeg, written to a temporary file and renamed into place, so a killed run leaves the
old video whole) or to a folder of PNG files. This module imports no click: errors are `VideoError`s whose message is
one line naming the option or file.
"""

import contextlib
import io
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import scipy.interpolate
import torch

from dnnlib import atomic
from torch_utils import images, misc

# Defaults of NVIDIA's gen_video.py: 120 frames per keyframe step, 60 frames per second, H.264 at 12 Mbit/s.
DEFAULT_W_FRAMES = 120
DEFAULT_FPS = 60
VIDEO_CODEC = "libx264"
VIDEO_BITRATE = "12M"
# yuv420p (the pixel format players expect) needs even sizes only; imageio-ffmpeg's default of 16 would rescale
# e.g. a 3x1 grid of 40-pixel cells, so that the video would not have the frames' size.
MACRO_BLOCK_SIZE = 2

EASINGS = ("linear", "cubic")
SPACES = ("w", "z")
# Copies of the keyframes before (and after) the looping keyframes that the spline is fitted to.
LOOP_PADDING_COPIES = 2
FRAME_NAME = "frame{:05d}.png"
FRAME_PATTERN = re.compile(r"frame\d{5,}\.png")


class VideoError(ValueError):
    """Bad input to a video: the message is one line naming the option or file and what was expected."""


# ----------------------------------------------------------------------------------------------------------------------
# Keyframe latents


def seed_latents(seeds: list[int], z_dim: int) -> np.ndarray:
    """z [len(seeds), z_dim] float64: row i is RandomState(seeds[i]).randn(z_dim), as generate.py draws it."""
    return np.stack([np.random.RandomState(seed).randn(z_dim) for seed in seeds]).reshape(len(seeds), z_dim)


def load_projected_ws(paths: list[str], num_ws: int, w_dim: int) -> np.ndarray:
    """w [N, num_ws, w_dim] float32: the rows of array `w` of every file (projector.py's .npz, or a .npy), in order."""
    rows = []
    for path in paths:
        try:
            with contextlib.ExitStack() as stack:
                loaded = np.load(path, allow_pickle=False)
                if isinstance(loaded, np.lib.npyio.NpzFile):
                    stack.enter_context(loaded)
                    loaded = loaded["w"]
                ws = np.asarray(loaded)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise VideoError(
                f"--projected-w {path}: cannot read it (a .npz with array 'w' or a .npy array): {exc}"
            ) from exc
        if not np.issubdtype(ws.dtype, np.floating) or ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim):
            raise VideoError(
                f"--projected-w {path}: expected a float array [N, {num_ws}, {w_dim}] (num_ws, w_dim of the "
                f"network), found {ws.dtype} {list(ws.shape)}"
            )
        rows.append(ws.astype(np.float32))
    return np.concatenate(rows)


def assign_keyframes(
    count: int, num_cells: int, num_keyframes: int | None, shuffle_seed: int | None, source: str
) -> np.ndarray:
    """Indices [num_cells, K] into `count` keyframe sources (seeds or w rows), as NVIDIA's gen_video.py assigns them.

    The sources are repeated cyclically over the num_cells * K slots (optionally shuffled with
    RandomState(shuffle_seed)); cell i takes slots i*K .. i*K + K - 1. Without `num_keyframes`, K = count / num_cells,
    which must be a whole number. `source` names the option in messages.
    """
    if count == 0:
        raise VideoError(f"{source} names no keyframe")
    if num_keyframes is None:
        if count % num_cells != 0:
            raise VideoError(
                f"{source} gives {count} keyframes, which a grid of {num_cells} cells cannot share evenly; "
                f"give a multiple of {num_cells} or set --num-keyframes"
            )
        num_keyframes = count // num_cells
    slots = np.arange(num_cells * num_keyframes) % count
    if shuffle_seed is not None:
        np.random.RandomState(shuffle_seed).shuffle(slots)
    return slots.reshape(num_cells, num_keyframes)


# ----------------------------------------------------------------------------------------------------------------------
# Walks


class LatentWalk:
    """Latents along a walk through keyframes [K, *shape]; `walk(frame)` is the latent [*shape] of one frame."""

    def __init__(self, keyframes: np.ndarray, w_frames: int, easing: str, loop: bool):
        num_keys = keyframes.shape[0]
        if easing not in EASINGS:
            raise VideoError(f"--easing {easing}: expected one of {', '.join(EASINGS)}")
        if w_frames < 1:
            raise VideoError(f"--w-frames {w_frames}: expected at least 1 frame per keyframe step")
        if not loop and num_keys < 2:
            raise VideoError("--no-loop needs at least 2 keyframes per cell (see --num-keyframes)")
        self.w_frames = w_frames
        self.num_frames = num_keys * w_frames if loop else (num_keys - 1) * w_frames + 1
        keyframes = np.asarray(keyframes, dtype=np.float64)
        self._curve = None
        if easing == "cubic":
            positions, values = np.arange(num_keys), keyframes
            if loop:
                copies = 2 * LOOP_PADDING_COPIES + 1
                positions = np.arange(-LOOP_PADDING_COPIES * num_keys, (LOOP_PADDING_COPIES + 1) * num_keys)
                values = np.tile(keyframes, (copies,) + (1,) * (keyframes.ndim - 1))
            self._curve = scipy.interpolate.CubicSpline(positions, values, axis=0)  # not-a-knot, like interp1d
        # Linear walks go straight from stop to stop; a looping one returns to the first keyframe.
        self._stops = np.concatenate([keyframes, keyframes[:1]]) if loop else keyframes

    def __call__(self, frame: int) -> np.ndarray:
        t = frame / self.w_frames
        if self._curve is not None:
            return self._curve(t)
        segment = min(int(t), len(self._stops) - 2)
        frac = t - segment
        return (1 - frac) * self._stops[segment] + frac * self._stops[segment + 1]


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def truncate(G, ws: torch.Tensor, truncation_psi: float) -> torch.Tensor:
    """ws [N, num_ws, w_dim] moved towards G.mapping.w_avg: w_avg + psi * (w - w_avg), as the mapping truncates."""
    return ws if truncation_psi == 1 else G.mapping.w_avg.lerp(ws, truncation_psi)


def map_z(G, z: torch.Tensor, label: torch.Tensor, truncation_psi: float) -> torch.Tensor:
    """z [N, z_dim] and one label [1, c_dim] -> truncated ws [N, num_ws, w_dim]."""
    misc.assert_shape(z, [None, G.z_dim])
    return G.mapping(z, label.expand(z.shape[0], -1), truncation_psi=truncation_psi)


def render_cells(G, latents: np.ndarray, space: str, label, truncation_psi, noise_mode: str, device) -> np.ndarray:
    """Latents [cells, z_dim] (space z) or ws [cells, num_ws, w_dim] (space w) -> uint8 [cells, H, W, C].

    z latents are mapped with `label` and truncation here; w latents are used as they are (truncated as keyframes).
    """
    latents = torch.from_numpy(np.ascontiguousarray(latents)).to(device=device, dtype=torch.float32)
    ws = map_z(G, latents, label, truncation_psi) if space == "z" else latents
    misc.assert_shape(ws, [None, G.num_ws, G.w_dim])
    return images.generator_to_hwc(G.synthesis(ws, noise_mode=noise_mode))


def walk_frames(G, walk: LatentWalk, space: str, grid: tuple[int, int], label, truncation_psi, noise_mode, device):
    """Yield the frames uint8 [grid_h * H, grid_w * W, C] of a walk whose latents are [cells, ...] per frame."""
    for frame_idx in range(walk.num_frames):
        cells = render_cells(G, walk(frame_idx), space, label, truncation_psi, noise_mode, device)
        yield tile_cells(cells, *grid)


def tile_cells(cells: np.ndarray, grid_w: int, grid_h: int) -> np.ndarray:
    """uint8 [grid_h * grid_w, H, W, C] -> one frame [grid_h * H, grid_w * W, C]; cell i at row i // grid_w."""
    _, height, width, channels = cells.shape
    grid = cells.reshape(grid_h, grid_w, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(grid_h * height, grid_w * width, channels)


# ----------------------------------------------------------------------------------------------------------------------
# Frame writers: each is a context manager yielding `write(frame)` for uint8 frames [H, W, C]


@contextlib.contextmanager
def mp4_writer(path: str, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """Frames -> H.264 mp4 at `path`, replaced only when every frame is written. 1 channel: gray; 4: alpha dropped."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise VideoError("--output: writing mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from exc
    with atomic.atomic_path(path) as tmp_path:
        state = {}

        def write(frame: np.ndarray) -> None:
            height, width, channels = frame.shape
            if "writer" not in state:
                state["size"] = (height, width, channels)
                writer = imageio_ffmpeg.write_frames(
                    tmp_path,
                    (width, height),
                    pix_fmt_in="gray" if channels == 1 else "rgb24",
                    fps=fps,
                    codec=VIDEO_CODEC,
                    bitrate=VIDEO_BITRATE,
                    macro_block_size=MACRO_BLOCK_SIZE,
                )
                writer.send(None)  # starts ffmpeg
                state["writer"] = writer
            assert frame.shape == state["size"], f"frame {frame.shape} after frames of {state['size']}"
            pixels = frame[:, :, 0] if channels == 1 else frame[:, :, :3]
            state["writer"].send(np.ascontiguousarray(pixels))

        try:
            yield write
        except BaseException:
            if "writer" in state:
                state["writer"].close()
            raise
        if "writer" not in state:
            raise VideoError(f"--output {path}: the video has no frames")
        try:
            state["writer"].close()  # waits for ffmpeg to finish the file
        except (OSError, RuntimeError) as exc:
            raise VideoError(f"--output {path}: ffmpeg failed: {str(exc).splitlines()[0]}") from exc


@contextlib.contextmanager
def frames_dir_writer(outdir: str) -> Iterator[Callable[[np.ndarray], None]]:
    """Frames -> <outdir>/frame00000.png, frame00001.png, ... (1, 3 or 4 channels; RGBA keeps alpha), each atomic."""
    count = 0

    def write(frame: np.ndarray) -> None:
        nonlocal count
        buffer = io.BytesIO()
        images.to_pil(frame).save(buffer, format="png")
        atomic.atomic_write_bytes(os.path.join(outdir, FRAME_NAME.format(count)), buffer.getvalue())
        count += 1

    yield write


def stale_frames(outdir: str, num_frames: int) -> list[str]:
    """Names of frame files in `outdir` numbered num_frames or higher: a new video of num_frames leaves them there."""
    if not os.path.isdir(outdir):
        return []
    names = [name for name in os.listdir(outdir) if FRAME_PATTERN.fullmatch(name)]
    return sorted(name for name in names if int(name[5:-4]) >= num_frames)


def check_mp4_name(path: str) -> None:
    """--output must end in .mp4: ffmpeg picks the container from the extension, and libx264 frames need mp4."""
    if os.path.splitext(path)[1].lower() != ".mp4":
        raise VideoError(f"--output {path}: expected a file name ending in .mp4")
