"""Inception Score (Salimans et al. 2016): exp of the mean KL divergence between per-image class posteriors and
their marginal, over splits of the generated set."""

import numpy as np

from metrics import metric_utils

# Softmax over the 1008 classes computed without the final layer's bias, as the original IS code did.
DETECTOR_KWARGS = dict(no_output_bias=True)


def _split_score(probs):
    """exp(mean KL(p_n || marginal)) of one split `[n, classes]`, in float32."""
    log_marginal = np.log(probs.mean(axis=0, keepdims=True))
    mean_kl = (probs * (np.log(probs) - log_marginal)).sum(axis=1).mean()
    return np.exp(mean_kl)


def is_from_probs(probs, num_splits):
    """(mean, population std) of the per-split scores for float32 class probabilities `[N, classes]`.

    Split i covers rows [i*N//num_splits, (i+1)*N//num_splits); float32 arithmetic like the reference.
    """
    # Explicit cut points, because np.array_split would hand the remainder rows to the first splits instead.
    cuts = [k * len(probs) // num_splits for k in range(1, num_splits)]
    scores = np.array([_split_score(split) for split in np.split(probs, cuts)])
    return float(scores.mean()), float(scores.std())


def compute_is(opts, num_gen, num_splits):
    """Inception score of `num_gen` generated images: (mean, std) on rank 0, (NaN, NaN) elsewhere."""
    gen_probs = metric_utils.compute_generated_features(
        opts, metric_utils.INCEPTION_URL, DETECTOR_KWARGS, metric_utils.ALL_ROWS, num_gen=num_gen
    )
    if opts.rank != 0:
        return float("nan"), float("nan")
    return is_from_probs(gen_probs, num_splits)
