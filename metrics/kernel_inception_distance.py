"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel, averaged over
random subsets of Inception pool features."""

import numpy as np

from metrics import metric_utils

DETECTOR_KWARGS = dict(return_features=True)  # [N, 2048] pool features.


def _cubic_kernel(a, b):
    """k(a_i, b_j) = (a_i . b_j / F + 1)^3 for every row pair of `a` `[n, F]` and `b` `[k, F]` -> `[n, k]`."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def _random_rows(features, count):
    """`count` distinct rows of `features`, chosen by one `np.random.choice` call (global numpy RNG)."""
    return features[np.random.choice(len(features), count, replace=False)]


def _scaled_mmd2(gen_rows, real_rows):
    """Unbiased MMD^2 of two equally sized row sets `[m, F]`, multiplied by m (the caller divides it out)."""
    size = len(gen_rows)
    within = _cubic_kernel(gen_rows, gen_rows) + _cubic_kernel(real_rows, real_rows)
    # Self-similarities on the diagonal would bias the estimate, so only the off-diagonal terms count.
    off_diagonal = within.sum() - np.trace(within)
    return off_diagonal / (size - 1) - _cubic_kernel(gen_rows, real_rows).sum() * 2 / size


def kid_from_features(real_features, gen_features, num_subsets, max_subset_size):
    """KID from float32 features `[n_real, F]` and `[n_gen, F]`.

    Random draws (global numpy RNG), per subset: `choice` of generated rows, then of real rows, both without
    replacement. Kept in float32 arithmetic like the reference.
    """
    subset_size = min(len(real_features), len(gen_features), max_subset_size)
    # Arguments evaluate left to right, so each subset draws its generated rows before its real rows. The float32
    # terms are summed one by one in subset order.
    total = sum(
        _scaled_mmd2(_random_rows(gen_features, subset_size), _random_rows(real_features, subset_size))
        for _ in range(num_subsets)
    )
    return float(total / num_subsets / subset_size)


def compute_kid(opts, max_real, num_gen, num_subsets, max_subset_size):
    """KID between up to `max_real` dataset images and `num_gen` generated images (rank 0; NaN elsewhere)."""
    real_features, gen_features = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.INCEPTION_URL, DETECTOR_KWARGS, metric_utils.ALL_ROWS, max_real=max_real, num_gen=num_gen
    )
    if opts.rank != 0:
        return float("nan")
    return kid_from_features(real_features, gen_features, num_subsets, max_subset_size)
