"""Inception Score (Salimans et al. 2016): exp of the mean KL divergence between per-image class posteriors and
their marginal, over splits of the generated set."""

import numpy as np

from metrics import metric_utils

# Softmax over the 1008 classes computed without the final layer's bias, as the original IS code did.
DETECTOR_KWARGS = dict(no_output_bias=True)


def is_from_probs(probs, num_splits):
    """(mean, population std) of the per-split scores for float32 class probabilities `[N, classes]`.

    Split i covers rows [i*N//num_splits, (i+1)*N//num_splits); float32 arithmetic like the reference.
    """
    num_items = probs.shape[0]
    scores = []
    for i in range(num_splits):
        part = probs[i * num_items // num_splits : (i + 1) * num_items // num_splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        kl = np.mean(np.sum(kl, axis=1))
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits):
    """Inception score of `num_gen` generated images: (mean, std) on rank 0, (NaN, NaN) elsewhere."""
    gen_probs = metric_utils.compute_feature_stats_for_generator(
        opts=opts,
        detector_url=metric_utils.INCEPTION_URL,
        detector_kwargs=DETECTOR_KWARGS,
        capture_all=True,
        max_items=num_gen,
    ).get_all()
    if opts.rank != 0:
        return float("nan"), float("nan")
    return is_from_probs(gen_probs, num_splits)
