"""Fréchet Inception Distance (Heusel et al. 2017): distance between Gaussians fitted to Inception pool features."""

import numpy as np
import scipy.linalg

from metrics import metric_utils

DETECTOR_KWARGS = dict(return_features=True)  # [N, 2048] pool features.


def fid_from_moments(mu_real, sigma_real, mu_gen, sigma_gen):
    """FID = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 sqrtm(S_g S_r)) from float64 means `[F]` and covariances `[F, F]`."""
    mean_term = np.square(mu_gen - mu_real).sum()
    # Older SciPy returned (sqrtm, error) when asked; current SciPy returns the matrix only.
    root = scipy.linalg.sqrtm(np.dot(sigma_gen, sigma_real))
    if isinstance(root, tuple):
        root = root[0]
    # The root may be complex for a numerically non-PSD product; only the final scalar is made real.
    return float(np.real(mean_term + np.trace(sigma_gen + sigma_real - root * 2)))


def compute_fid(opts, max_real, num_gen):
    """FID between the first `max_real` dataset images (None = all) and `num_gen` generated images (rank 0; NaN
    elsewhere)."""
    (mu_real, sigma_real), (mu_gen, sigma_gen) = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.INCEPTION_URL, DETECTOR_KWARGS, metric_utils.MEAN_COV, max_real=max_real, num_gen=num_gen
    )
    if opts.rank != 0:
        return float("nan")
    return fid_from_moments(mu_real, sigma_real, mu_gen, sigma_gen)
