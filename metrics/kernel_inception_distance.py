"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel, averaged over
random subsets of Inception pool features."""

import numpy as np

from metrics import metric_utils

DETECTOR_KWARGS = dict(return_features=True)  # [N, 2048] pool features.


def kid_from_features(real_features, gen_features, num_subsets, max_subset_size):
    """KID from float32 features `[n_real, F]` and `[n_gen, F]`.

    Random draws (global numpy RNG), per subset: `choice` of generated rows, then of real rows, both without
    replacement. Kept in float32 arithmetic like the reference.
    """
    n = real_features.shape[1]
    m = min(min(real_features.shape[0], gen_features.shape[0]), max_subset_size)
    t = 0
    for _subset_idx in range(num_subsets):
        x = gen_features[np.random.choice(gen_features.shape[0], m, replace=False)]
        y = real_features[np.random.choice(real_features.shape[0], m, replace=False)]
        within = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        across = (x @ y.T / n + 1) ** 3
        # Dropping the diagonal of the within-set kernels makes the MMD^2 estimate unbiased.
        t += (within.sum() - np.diag(within).sum()) / (m - 1) - across.sum() * 2 / m
    return float(t / num_subsets / m)


def compute_kid(opts, max_real, num_gen, num_subsets, max_subset_size):
    """KID between up to `max_real` dataset images and `num_gen` generated images (rank 0; NaN elsewhere)."""
    detector_url = metric_utils.INCEPTION_URL
    real_features = metric_utils.compute_feature_stats_for_dataset(
        opts=opts,
        detector_url=detector_url,
        detector_kwargs=DETECTOR_KWARGS,
        rel_lo=0,
        rel_hi=0,
        capture_all=True,
        max_items=max_real,
    ).get_all()
    gen_features = metric_utils.compute_feature_stats_for_generator(
        opts=opts,
        detector_url=detector_url,
        detector_kwargs=DETECTOR_KWARGS,
        rel_lo=0,
        rel_hi=1,
        capture_all=True,
        max_items=num_gen,
    ).get_all()
    if opts.rank != 0:
        return float("nan")
    return kid_from_features(real_features, gen_features, num_subsets, max_subset_size)
