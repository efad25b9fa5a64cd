"""Closed-form factorisation of the style modulation (SeFa, Shen & Zhou 2021): edit directions in W without training.

Every synthesis convolution layer turns its w into per-channel styles with an affine layer, styles = A w + b. The
directions that change the styles most are the eigenvectors of A^T A with the largest eigenvalues, A being the
affine weights of the chosen layers stacked row-wise (each row normalised to unit length, as the SeFa authors' code
does). The toRGB layers are left out, also as the authors' code does.

A directions file (.npz, written by sefa.py) holds:
    directions   float32 [w_dim, w_dim]  orthonormal rows, sorted by eigenvalue, largest first
    eigenvalues  float64 [w_dim]         descending
    layer_names  str [L]                 the affine layers factorised, e.g. b8.conv0
    ws           int64 [R]               the rows of ws [N, num_ws, w_dim] that an edit moves
    num_ws       int64 []                of the network the file was computed for
An edit adds strength * directions[index] to the rows `ws`: every row when all layers were factorised, else the rows
feeding the layers chosen with --layers.
"""

import os

import numpy as np
import torch

from dnnlib import atomic
from torch_utils import images, misc
from training import video

DIRECTION_ARRAYS = ("directions", "eigenvalues", "layer_names", "ws", "num_ws")
# Affine rows of zero length (dead channels) would divide by zero when normalised; they then stay zero.
MIN_ROW_NORM = 1e-12


class DirectionError(ValueError):
    """A bad edit-direction file or FILE:INDEX, or a layer choice the network lacks; the message is one line."""


def conv_layers(G) -> list[tuple[str, int, torch.nn.Module]]:
    """(name, w index, layer) of every synthesis convolution layer in w order: b4.conv1 (w 0), b8.conv0 (w 1), ...

    Convolution layer i reads row i of ws; the last row, num_ws - 1, feeds only the final toRGB layer.
    """
    layers = []
    w_idx = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        names = ["conv0", "conv1"] if block.num_conv == 2 else ["conv1"]
        layers += [(f"b{res}.{name}", w_idx + i, getattr(block, name)) for i, name in enumerate(names)]
        w_idx += block.num_conv
    return layers


def select_layers(G, w_indices: list[int] | None) -> tuple[list[tuple[str, np.ndarray]], list[int]]:
    """([(name, affine weight [channels, w_dim])], edited w rows) of all convolution layers or those of `w_indices`."""
    layers = conv_layers(G)
    if w_indices is None:
        chosen, rows = layers, list(range(G.num_ws))
    else:
        known = {w_idx: (name, layer) for name, w_idx, layer in layers}
        bad = [idx for idx in w_indices if idx not in known]
        if bad or not w_indices:
            found = f"found {bad[0]}" if bad else "found none"
            raise DirectionError(
                f"--layers: expected w indices 0-{len(layers) - 1} (the network's convolution layers), {found}"
            )
        rows = sorted(set(w_indices))
        chosen = [(known[idx][0], idx, known[idx][1]) for idx in rows]
    weights = [
        (name, (layer.affine.weight * layer.affine.weight_gain).detach().cpu().double().numpy())
        for name, _, layer in chosen
    ]
    return weights, rows


def factorise(weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Affine weights [channels_i, w_dim] -> (directions float32 [w_dim, w_dim] orthonormal rows, eigenvalues).

    Eigenvectors of A^T A (A: the weights stacked, rows normalised), largest eigenvalue first. An eigenvector's sign
    is arbitrary; each row is flipped so that its largest-magnitude entry is positive, so that files are reproducible.
    """
    stacked = np.concatenate(weights, axis=0).astype(np.float64)
    stacked /= np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), MIN_ROW_NORM)
    eigenvalues, eigenvectors = np.linalg.eigh(stacked.T @ stacked)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    directions = eigenvectors[:, order].T
    peaks = directions[np.arange(len(directions)), np.abs(directions).argmax(axis=1)]
    directions *= np.where(peaks < 0, -1.0, 1.0)[:, None]
    return directions.astype(np.float32), eigenvalues[order]


def save_directions(path: str, directions, eigenvalues, layer_names: list[str], rows: list[int], num_ws: int) -> None:
    """Write a directions file (module docstring) atomically."""
    arrays = dict(
        directions=directions,
        eigenvalues=eigenvalues,
        layer_names=np.array(layer_names),
        ws=np.array(rows, dtype=np.int64),
        num_ws=np.array(num_ws, dtype=np.int64),
    )
    atomic.atomic_write(path, lambda f: np.savez(f, **arrays))


# ----------------------------------------------------------------------------------------------------------------------
# Edits


def parse_direction_spec(spec: str) -> tuple[str, int]:
    """`FILE:INDEX` -> (FILE, INDEX); the last colon splits, so that Windows paths (C:\\...) work."""
    path, sep, index = spec.rpartition(":")
    if not sep or not path or not index.strip().isdigit():
        raise DirectionError(f"--direction {spec}: expected FILE:INDEX, e.g. directions.npz:0")
    return path, int(index)


def load_direction(spec: str, num_ws: int, w_dim: int) -> tuple[np.ndarray, list[int]]:
    """`FILE:INDEX` -> (direction float32 [w_dim], w rows it moves), checked against the network's num_ws, w_dim."""
    path, index = parse_direction_spec(spec)
    if not os.path.isfile(path):
        raise DirectionError(f"--direction {spec}: {path} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DirectionError(f"--direction {path}: cannot read it as a sefa.py .npz: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DirectionError(f"--direction {path}: expected a sefa.py .npz, found a single array")
    with loaded:
        missing = [name for name in ("directions", "ws", "num_ws") if name not in loaded.files]
        if missing:
            raise DirectionError(f"--direction {path}: not a sefa.py directions file (no array {missing[0]})")
        directions, rows, file_num_ws = loaded["directions"], loaded["ws"], int(loaded["num_ws"])
    bad_rows = rows.ndim != 1 or not all(0 <= row < num_ws for row in rows.tolist())
    if directions.ndim != 2 or directions.shape[1] != w_dim or file_num_ws != num_ws or bad_rows:
        raise DirectionError(
            f"--direction {path}: computed for a network with num_ws={file_num_ws}, w_dim={directions.shape[-1]}; "
            f"this one has num_ws={num_ws}, w_dim={w_dim}"
        )
    if not 0 <= index < len(directions):
        raise DirectionError(
            f"--direction {spec}: index {index} is out of range; the file holds directions 0-{len(directions) - 1}"
        )
    return directions[index].astype(np.float32), [int(row) for row in rows]


def apply_direction(ws: torch.Tensor, direction, rows: list[int], strength) -> torch.Tensor:
    """ws [N, num_ws, w_dim] -> a copy with strength * direction [w_dim] added to the rows `rows`.

    `strength` is a float or a tensor [N] (one strength per item).
    """
    misc.assert_shape(ws, [None, None, len(direction)])
    edited = ws.clone()
    direction = torch.as_tensor(direction, dtype=ws.dtype, device=ws.device)
    strength = torch.as_tensor(strength, dtype=ws.dtype, device=ws.device).reshape(-1, 1, 1)
    edited[:, rows] += strength * direction
    return edited


# ----------------------------------------------------------------------------------------------------------------------
# Pictures of the edits


def render_edit_grid(G, ws: torch.Tensor, directions, rows: list[int], strengths, noise_mode: str) -> np.ndarray:
    """uint8 grid [S * k * H, steps * W, C]: a row per (seed, direction), seed-major; a column per strength.

    ws [S, num_ws, w_dim] (the seeds' truncated w), directions [k, w_dim], strengths [steps] (e.g. -5 .. 5).
    """
    strengths = torch.as_tensor(np.asarray(strengths), dtype=torch.float32, device=ws.device)
    cells = []
    for w in ws:
        for direction in directions:
            edited = apply_direction(w.unsqueeze(0).repeat(len(strengths), 1, 1), direction, rows, strengths)
            cells.append(images.generator_to_hwc(G.synthesis(edited, noise_mode=noise_mode)))
    return video.tile_cells(np.concatenate(cells), len(strengths), len(ws) * len(directions))


def edit_video_frames(G, ws: torch.Tensor, directions, rows, degrees: float, num_frames: int, noise_mode: str):
    """Yield frames uint8 [k * H, S * W, C]: seeds in columns, directions in rows, all moved by the same strength.

    The strength of frame f is degrees * sin(2 pi f / num_frames): out to +degrees, back through 0 to -degrees and
    back, so that the video loops.
    """
    num_seeds = len(ws)
    for frame_idx in range(num_frames):
        strength = degrees * np.sin(2 * np.pi * frame_idx / num_frames)
        edited = [apply_direction(ws, direction, rows, strength) for direction in directions]
        img = G.synthesis(torch.cat(edited), noise_mode=noise_mode)  # cell i: direction i // S, seed i % S
        yield video.tile_cells(images.generator_to_hwc(img), num_seeds, len(directions))
