"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifold estimates in VGG16 feature space."""

import torch

from metrics import metric_utils
from torch_utils import misc

DETECTOR_KWARGS = dict(return_features=True)  # [N, 4096] embedding, images resized to 224x224 inside.


def _cdist(rows, cols):
    """Euclidean distances `[n_rows, n_cols]` in the inputs' dtype.

    PyTorch has no float16 `cdist` on the CPU, so there it is computed in float32 and rounded back to float16 (the
    same substitution the reference test vectors were made with); on CUDA float16 is used directly.
    """
    if rows.dtype == torch.float16 and rows.device.type == "cpu":
        return torch.cdist(rows.float().unsqueeze(0), cols.float().unsqueeze(0))[0].to(torch.float16)
    return torch.cdist(rows.unsqueeze(0), cols.unsqueeze(0))[0]


def compute_distances(row_features, col_features, num_gpus, rank, col_batch_size):
    """Distances from every row `[n_rows, F]` to every column `[n_cols, F]`, split over processes by column chunks.

    Returns the full `[n_rows, n_cols]` matrix (CPU) on rank 0 and None elsewhere.
    """
    assert 0 <= rank < num_gpus
    num_cols = col_features.shape[0]
    # At least ceil(num_cols / col_batch_size) chunks, rounded up to a multiple of num_gpus so every process gets as
    # many; the zero rows padded on to make the chunks equal are cut off at the end.
    num_chunks = ((num_cols - 1) // col_batch_size // num_gpus + 1) * num_gpus
    chunks = torch.nn.functional.pad(col_features, [0, 0, 0, -num_cols % num_chunks]).chunk(num_chunks)
    # Round k: process p computes chunk k * num_gpus + p; gathering in rank order keeps the chunks in column order.
    blocks_on_rank0 = []
    for own_chunk in chunks[rank::num_gpus]:
        round_blocks = misc.gather_from_ranks(_cdist(row_features, own_chunk), num_gpus)
        if rank == 0:
            blocks_on_rank0 += [block.cpu() for block in round_blocks]
    if rank != 0:
        return None
    return torch.cat(blocks_on_rank0, dim=1)[:, :num_cols]


def manifold_fraction(manifold, probes, nhood_size, row_batch_size, col_batch_size, num_gpus=1, rank=0):
    """Fraction of `probes` `[n_p, F]` inside the k-NN manifold of `manifold` `[n_m, F]` (rank 0; None elsewhere).

    A manifold point's radius is its (nhood_size+1)-th smallest distance to the manifold, the point itself included
    (so effectively the distance to its nhood_size-th other neighbour); a probe is inside if it lies within the
    radius of at least one manifold point.
    """
    kth = []
    for manifold_batch in manifold.split(row_batch_size):
        dist = compute_distances(manifold_batch, manifold, num_gpus=num_gpus, rank=rank, col_batch_size=col_batch_size)
        if rank == 0:
            kth.append(dist.to(torch.float32).kthvalue(nhood_size + 1, dim=1).values.to(torch.float16))
    kth = torch.cat(kth) if rank == 0 else None

    inside = []
    for probes_batch in probes.split(row_batch_size):
        dist = compute_distances(probes_batch, manifold, num_gpus=num_gpus, rank=rank, col_batch_size=col_batch_size)
        if rank == 0:
            inside.append((dist <= kth.unsqueeze(0)).any(dim=1))
    if rank != 0:
        return None
    return float(torch.cat(inside).to(torch.float32).mean())


def precision_recall_from_features(
    real_features, gen_features, nhood_size, row_batch_size, col_batch_size, num_gpus=1, rank=0
):
    """(precision, recall) from float16 feature tensors; NaN on ranks other than 0."""
    results = dict()
    for name, manifold, probes in [("precision", real_features, gen_features), ("recall", gen_features, real_features)]:
        value = manifold_fraction(
            manifold, probes, nhood_size, row_batch_size, col_batch_size, num_gpus=num_gpus, rank=rank
        )
        results[name] = value if rank == 0 else float("nan")
    return results["precision"], results["recall"]


def _float16_on(device):
    """All feature rows as a float16 tensor `[n, F]` on `device` (the precision the reference computes distances in)."""
    return metric_utils.Capture(
        metric_utils.ALL_ROWS.stats_kwargs, lambda stats: stats.get_all_torch().to(torch.float16).to(device)
    )


def compute_pr(opts, max_real, num_gen, nhood_size, row_batch_size, col_batch_size):
    """(precision, recall) between up to `max_real` dataset images and `num_gen` generated ones (NaN off rank 0)."""
    real_features, gen_features = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.VGG16_URL, DETECTOR_KWARGS, _float16_on(opts.device), max_real=max_real, num_gen=num_gen
    )
    return precision_recall_from_features(
        real_features,
        gen_features,
        nhood_size=nhood_size,
        row_batch_size=row_batch_size,
        col_batch_size=col_batch_size,
        num_gpus=opts.num_gpus,
        rank=opts.rank,
    )
