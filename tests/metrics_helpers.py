"""Test helpers shared by the metric tests: stand-in feature detectors and metrics with small sample counts.

The real detectors are large downloads, so small TorchScript modules with the same call conventions and output
widths are saved under the published file names and found through $STYLEGAN_DETECTOR_DIR. The real metrics use
50k samples; `shrink_metrics` wraps the `compute_*` functions with small counts (in this process), and
`shrunk_driver(script)` returns `python -c` source that does the same in a child and then runs a command-line
script (calc_metrics.py, train.py) as __main__, leaving the registry and the CLIs untouched.
"""

import importlib
import os
import warnings

import torch

from metrics import metric_utils

# ----------------------------------------------------------------------------------------------------------------------
# Stand-in detectors (same keywords, input dtypes and output widths as the published TorchScript files).


class StandInInception(torch.nn.Module):
    """uint8 [N, 3, H, W] -> 2048 pool features (`return_features`) or 1008 softmax probabilities."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        # Buffers, not parameters: like the published files, the detectors carry no gradients.
        self.register_buffer("proj", torch.randn([2048, 48], generator=gen) / 4)
        self.register_buffer("cls_weight", torch.randn([1008, 2048], generator=gen) / 16)
        self.register_buffer("cls_bias", torch.randn([1008], generator=gen))

    def forward(
        self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> torch.Tensor:
        assert img.dtype == torch.uint8, "feature statistics pass uint8 images"
        assert img.dim() == 4 and img.shape[1] == 3, "expected [N, 3, H, W]"
        assert not use_fp16, "the reference never enables use_fp16"
        x = torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255, 4).flatten(1)
        features = torch.tanh(torch.nn.functional.linear(x, self.proj))
        if return_features:
            return features
        logits = torch.nn.functional.linear(features, self.cls_weight)
        if not no_output_bias:
            logits = logits + self.cls_bias
        return torch.softmax(logits, dim=1)


class StandInVGG16(torch.nn.Module):
    """uint8 -> 4096 features (`return_features`); float32 -> size-dependent LPIPS embedding (`return_lpips`)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(2)
        self.register_buffer("proj", torch.randn([4096, 48], generator=gen) / 4)

    def forward(
        self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        assert img.dim() == 4 and img.shape[1] == 3, "expected [N, 3, H, W]"
        x = img.to(torch.float32) / 255
        if resize_images:
            x = torch.nn.functional.interpolate(x, size=(16, 16), mode="area")
        if return_lpips:
            assert img.dtype == torch.float32, "LPIPS inputs are float pixel values"
            assert not resize_images, "PPL passes resize_images=False"
            return torch.nn.functional.avg_pool2d(x, 2).flatten(1)  # [N, 3 * H/2 * W/2]
        assert img.dtype == torch.uint8, "feature statistics pass uint8 images"
        assert return_features, "precision/recall asks for return_features"
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.tanh(torch.nn.functional.linear(pooled, self.proj))


def save_stand_in_detectors(detector_dir: str) -> str:
    """Write both stand-ins into `detector_dir` under the published file names; returns `detector_dir`."""
    os.makedirs(detector_dir, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript is the published format.
        for module, url in [(StandInInception(), metric_utils.INCEPTION_URL), (StandInVGG16(), metric_utils.VGG16_URL)]:
            torch.jit.script(module).save(os.path.join(detector_dir, url.split("/")[-1]))
    return detector_dir


# ----------------------------------------------------------------------------------------------------------------------
# Command-line driver with small sample counts.

# (module under metrics/, function, keyword overrides): 64 generated images instead of 50k, and so on.
SHRUNK_ARGS = [
    ("frechet_inception_distance", "compute_fid", dict(num_gen=64)),
    ("kernel_inception_distance", "compute_kid", dict(num_gen=64, num_subsets=4, max_subset_size=8)),
    ("precision_recall", "compute_pr", dict(num_gen=64)),
    ("inception_score", "compute_is", dict(num_gen=64)),
    ("perceptual_path_length", "compute_ppl", dict(num_samples=8)),
    # Spawned loader workers each re-import torch (seconds apiece); the tiny datasets are read in-process instead.
    ("metric_utils", "compute_feature_stats_for_dataset", dict(data_loader_kwargs=dict(num_workers=0))),
]


def _with_overrides(original, overrides):
    def wrapper(opts, *args, **kwargs):
        kwargs.update(overrides)
        return original(opts, *args, **kwargs)

    return wrapper


def shrink_metrics(setattr_fn=setattr) -> None:
    """Wrap the functions of SHRUNK_ARGS in place; pass `monkeypatch.setattr` to have pytest undo it."""
    for module_name, name, overrides in SHRUNK_ARGS:
        module = importlib.import_module(f"metrics.{module_name}")
        setattr_fn(module, name, _with_overrides(getattr(module, name), overrides))


def shrunk_driver(script: str) -> str:
    """`python -c` source that shrinks the metrics, then runs `script` (relative to the repository root) as __main__
    with the command line's arguments."""
    return "\n".join(
        [
            "import runpy, sys",
            f"sys.path.append({os.path.dirname(os.path.abspath(__file__))!r})",
            "import metrics_helpers",
            "metrics_helpers.shrink_metrics()",
            f"sys.argv = [{script!r}] + sys.argv[1:]",
            f"runpy.run_path({script!r}, run_name='__main__')",
        ]
    )
