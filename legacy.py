"""Loading network pickles: native training snapshots and TensorFlow-era pickles (legacy spec).

TensorFlow-era pickles (a tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network` objects, written by the TensorFlow
StyleGAN2 / StyleGAN2-ADA code) are converted on the fly into `training.networks` modules, without TensorFlow.
Run as a script (`python legacy.py --source=... --dest=...`) to write the converted networks as a native pickle.
"""

import copy
import os
import pickle
import re

import click
import numpy as np
import torch

import dnnlib
from torch_utils import misc

# Keys every loaded pickle provides; the optional ones default to None when the pickle lacks them.
_NETWORK_KEYS = ("G", "D", "G_ema")
_OPTIONAL_KEYS = ("training_set_kwargs", "augment_pipe")

# Settings applied by force_fp16: the 4 highest resolutions in fp16, activations clamped to +-256.
_FORCED_NUM_FP16_RES = 4
_FORCED_CONV_CLAMP = 256

# Oldest TensorFlow network format the converters understand (4 = StyleGAN2, 5 = StyleGAN2-ADA).
_TF_MIN_VERSION = 4
# TF static kwargs that are accepted but have no PyTorch counterpart (run-time options / progressive growing).
_TF_G_IGNORED_KWARGS = ("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure")
_TF_D_IGNORED_KWARGS = ("structure",)


class UnsupportedPickleError(RuntimeError):
    """The file is not a network pickle this project can load (empty, truncated, not a pickle, wrong contents)."""


# ----------------------------------------------------------------------------
# Legacy unpickler


class _TFNetworkStub(dnnlib.EasyDict):
    """Stand-in for TensorFlow-era `dnnlib.tflib.network.Network` objects.

    It defines no `__setstate__`, so unpickling stores the pickled state dict in the instance `__dict__`: the
    fields (`version`, `static_kwargs`, `components`, `variables`, ...) become attributes, not items.
    """


class _MissingGlobalError(ImportError):
    """A class or function named by the pickle cannot be imported."""


class _LegacyUnpickler(pickle.Unpickler):
    """Standard unpickler, except that TensorFlow network objects are rebuilt as `_TFNetworkStub`."""

    def find_class(self, module, name):
        if module == "dnnlib.tflib.network" and name == "Network":
            return _TFNetworkStub
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise _MissingGlobalError(f"it needs {module}.{name}, which cannot be imported: {exc}") from exc


# ----------------------------------------------------------------------------
# TensorFlow-era conversion helpers


def _check_tf_version(tf_net):
    if tf_net.version < _TF_MIN_VERSION:
        raise ValueError("TensorFlow pickle version too low")


class _TFKwargs:
    """Reads a TF network's `static_kwargs`, remembering which names were consulted."""

    def __init__(self, tf_net):
        self.static_kwargs = tf_net.static_kwargs
        self.known = set()

    def __call__(self, tf_name, default=None, none=None):
        """`static_kwargs[tf_name]` (`default` if absent); an explicit or defaulted None becomes `none`."""
        self.known.add(tf_name)
        value = self.static_kwargs.get(tf_name, default)
        return value if value is not None else none

    def check_all_known(self, ignored):
        """Raise for any static kwarg that the converter neither read nor deliberately ignores."""
        self.known.update(ignored)
        for name in self.static_kwargs:
            if name not in self.known:
                raise ValueError("Unknown TensorFlow kwarg", name)


def _collect_tf_params(tf_net):
    """{full variable name: numpy value} over `tf_net` and its components (names prefixed `component/...`)."""
    params = {}

    def visit(prefix, net):
        for name, value in net.variables:
            params[prefix + name] = value
        for comp_name, comp in net.components.items():
            visit(prefix + comp_name + "/", comp)

    visit("", tf_net)
    return params


def _tf_conv(value):
    """TF conv weight [kh, kw, I, O] -> PyTorch [O, I, kh, kw]."""
    return value.transpose(3, 2, 0, 1)


def _tf_conv_flipped(value):
    """TF conv weight applied as cross-correlation by TF but as true convolution by PyTorch (`up=2` layers)."""
    return _tf_conv(value[::-1, ::-1])


def _populate_module_params(module, rules):
    """Fill every parameter and buffer of `module` from `rules` = [(name regex, fetch or None)].

    The first rule whose regex fully matches a name decides; `fetch(*regex_groups)` returns the value (NumPy) to
    copy in, and a `None` fetch leaves the tensor at its constructed value.
    """
    compiled = [(re.compile(pattern), fetch) for pattern, fetch in rules]
    with torch.no_grad():
        for name, tensor in misc.named_params_and_buffers(module):
            try:
                found = next(((m, fetch) for regex, fetch in compiled if (m := regex.fullmatch(name))), None)
                assert found is not None, f"TensorFlow conversion: no rule for {name}"
                match, fetch = found
                if fetch is not None:
                    # A fresh contiguous array: reversed/transposed views must be materialised before copying.
                    value = np.array(fetch(*match.groups()))
                    tensor.copy_(torch.from_numpy(value))
            except Exception:
                print(name, list(tensor.shape))
                raise


# ----------------------------------------------------------------------------
# Generator


def convert_tf_generator(tf_G):
    """TensorFlow-era generator stub -> `training.networks.Generator` (eval mode, no gradients)."""
    from training import networks  # Imported lazily: loading native pickles must not import `training`.

    _check_tf_version(tf_G)
    kwarg = _TFKwargs(tf_G)
    kwargs = dnnlib.EasyDict(
        z_dim=kwarg("latent_size", 512),
        c_dim=kwarg("label_size", 0),
        w_dim=kwarg("dlatent_size", 512),
        img_resolution=kwarg("resolution", 1024),
        img_channels=kwarg("num_channels", 3),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg("mapping_layers", 8),
            embed_features=kwarg("label_fmaps", None),
            layer_features=kwarg("mapping_fmaps", None),
            activation=kwarg("mapping_nonlinearity", "lrelu"),
            lr_multiplier=kwarg("mapping_lrmul", 0.01),
            w_avg_beta=kwarg("w_avg_beta", 0.995, none=1),
        ),
        synthesis_kwargs=dnnlib.EasyDict(
            channel_base=kwarg("fmap_base", 16384) * 2,
            channel_max=kwarg("fmap_max", 512),
            num_fp16_res=kwarg("num_fp16_res", 0),
            conv_clamp=kwarg("conv_clamp", None),
            architecture=kwarg("architecture", "skip"),
            resample_filter=kwarg("resample_kernel", [1, 3, 3, 1]),
            use_noise=kwarg("use_noise", True),
            activation=kwarg("nonlinearity", "lrelu"),
        ),
    )
    kwarg.check_all_known(_TF_G_IGNORED_KWARGS)

    tf_params = _collect_tf_params(tf_G)
    # Progressive-growing names; the collected names carry a `synthesis/` prefix, so this never matches in
    # practice (such generators then fail below with a missing-variable error).
    for name, value in list(tf_params.items()):
        match = re.fullmatch(r"ToRGB_lod(\d+)/(.*)", name)
        if match:
            r = kwargs.img_resolution // (2 ** int(match.group(1)))
            tf_params[f"{r}x{r}/ToRGB/{match.group(2)}"] = value
            kwargs.synthesis_kwargs.architecture = "orig"

    G = networks.Generator(**kwargs).eval().requires_grad_(False)
    p = tf_params

    def s(r, layer, var):
        return p[f"synthesis/{r}x{r}/{layer}/{var}"]

    def noise(r, offset):
        # TF numbers the noise inputs over all layers: 2 per block from 8x8 on, after the single 4x4 one.
        return p[f"synthesis/noise{2 * int(np.log2(int(r))) + offset}"][0, 0]

    # fmt: off
    rules = [
        (r"mapping\.w_avg",                           lambda: p["dlatent_avg"]),
        (r"mapping\.embed\.weight",                   lambda: p["mapping/LabelEmbed/weight"].transpose()),
        (r"mapping\.embed\.bias",                     lambda: p["mapping/LabelEmbed/bias"]),
        (r"mapping\.fc(\d+)\.weight",                 lambda i: p[f"mapping/Dense{i}/weight"].transpose()),
        (r"mapping\.fc(\d+)\.bias",                   lambda i: p[f"mapping/Dense{i}/bias"]),
        (r"synthesis\.b4\.const",                     lambda: p["synthesis/4x4/Const/const"][0]),
        (r"synthesis\.b4\.conv1\.weight",             lambda: _tf_conv(s(4, "Conv", "weight"))),
        (r"synthesis\.b4\.conv1\.bias",               lambda: s(4, "Conv", "bias")),
        (r"synthesis\.b4\.conv1\.noise_const",        lambda: p["synthesis/noise0"][0, 0]),
        (r"synthesis\.b4\.conv1\.noise_strength",     lambda: s(4, "Conv", "noise_strength")),
        (r"synthesis\.b4\.conv1\.affine\.weight",     lambda: s(4, "Conv", "mod_weight").transpose()),
        # TF adds the 1 to the style bias at run time; PyTorch stores it in the bias.
        (r"synthesis\.b4\.conv1\.affine\.bias",       lambda: s(4, "Conv", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.conv0\.weight",         lambda r: _tf_conv_flipped(s(r, "Conv0_up", "weight"))),
        (r"synthesis\.b(\d+)\.conv0\.bias",           lambda r: s(r, "Conv0_up", "bias")),
        (r"synthesis\.b(\d+)\.conv0\.noise_const",    lambda r: noise(r, -5)),
        (r"synthesis\.b(\d+)\.conv0\.noise_strength", lambda r: s(r, "Conv0_up", "noise_strength")),
        (r"synthesis\.b(\d+)\.conv0\.affine\.weight", lambda r: s(r, "Conv0_up", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.conv0\.affine\.bias",   lambda r: s(r, "Conv0_up", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.conv1\.weight",         lambda r: _tf_conv(s(r, "Conv1", "weight"))),
        (r"synthesis\.b(\d+)\.conv1\.bias",           lambda r: s(r, "Conv1", "bias")),
        (r"synthesis\.b(\d+)\.conv1\.noise_const",    lambda r: noise(r, -4)),
        (r"synthesis\.b(\d+)\.conv1\.noise_strength", lambda r: s(r, "Conv1", "noise_strength")),
        (r"synthesis\.b(\d+)\.conv1\.affine\.weight", lambda r: s(r, "Conv1", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.conv1\.affine\.bias",   lambda r: s(r, "Conv1", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.torgb\.weight",         lambda r: _tf_conv(s(r, "ToRGB", "weight"))),
        (r"synthesis\.b(\d+)\.torgb\.bias",           lambda r: s(r, "ToRGB", "bias")),
        (r"synthesis\.b(\d+)\.torgb\.affine\.weight", lambda r: s(r, "ToRGB", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.torgb\.affine\.bias",   lambda r: s(r, "ToRGB", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.skip\.weight",          lambda r: _tf_conv_flipped(s(r, "Skip", "weight"))),
        (r".*\.resample_filter",                      None),
    ]
    # fmt: on
    _populate_module_params(G, rules)
    return G


# ----------------------------------------------------------------------------
# Discriminator


def convert_tf_discriminator(tf_D):
    """TensorFlow-era discriminator stub -> `training.networks.Discriminator` (eval mode, no gradients)."""
    from training import networks  # Imported lazily: loading native pickles must not import `training`.

    _check_tf_version(tf_D)
    kwarg = _TFKwargs(tf_D)
    kwargs = dnnlib.EasyDict(
        c_dim=kwarg("label_size", 0),
        img_resolution=kwarg("resolution", 1024),
        img_channels=kwarg("num_channels", 3),
        architecture=kwarg("architecture", "resnet"),
        channel_base=kwarg("fmap_base", 16384) * 2,
        channel_max=kwarg("fmap_max", 512),
        num_fp16_res=kwarg("num_fp16_res", 0),
        conv_clamp=kwarg("conv_clamp", None),
        cmap_dim=kwarg("mapping_fmaps", None),
        block_kwargs=dnnlib.EasyDict(
            activation=kwarg("nonlinearity", "lrelu"),
            resample_filter=kwarg("resample_kernel", [1, 3, 3, 1]),
            freeze_layers=kwarg("freeze_layers", 0),
        ),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg("mapping_layers", 0),
            embed_features=kwarg("mapping_fmaps", None),
            layer_features=kwarg("mapping_fmaps", None),
            activation=kwarg("nonlinearity", "lrelu"),
            lr_multiplier=kwarg("mapping_lrmul", 0.1),
        ),
        epilogue_kwargs=dnnlib.EasyDict(
            mbstd_group_size=kwarg("mbstd_group_size", None),
            mbstd_num_channels=kwarg("mbstd_num_features", 1),
            activation=kwarg("nonlinearity", "lrelu"),
        ),
    )
    kwarg.check_all_known(_TF_D_IGNORED_KWARGS)

    tf_params = _collect_tf_params(tf_D)
    # Networks with the 'orig' architecture name their input layers per level of detail (FromRGB_lod<n>).
    for name, value in list(tf_params.items()):
        match = re.fullmatch(r"FromRGB_lod(\d+)/(.*)", name)
        if match:
            r = kwargs.img_resolution // (2 ** int(match.group(1)))
            tf_params[f"{r}x{r}/FromRGB/{match.group(2)}"] = value
            kwargs.architecture = "orig"

    D = networks.Discriminator(**kwargs).eval().requires_grad_(False)
    p = tf_params
    # fmt: off
    rules = [
        (r"b(\d+)\.fromrgb\.weight",    lambda r: _tf_conv(p[f"{r}x{r}/FromRGB/weight"])),
        (r"b(\d+)\.fromrgb\.bias",      lambda r: p[f"{r}x{r}/FromRGB/bias"]),
        # Down-sampling convolutions are cross-correlations on both sides: no flip.
        (r"b(\d+)\.conv(\d)\.weight",   lambda r, i: _tf_conv(p[f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/weight"])),
        (r"b(\d+)\.conv(\d)\.bias",     lambda r, i: p[f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/bias"]),
        (r"b(\d+)\.skip\.weight",       lambda r: _tf_conv(p[f"{r}x{r}/Skip/weight"])),
        (r"mapping\.embed\.weight",     lambda: p["LabelEmbed/weight"].transpose()),
        (r"mapping\.embed\.bias",       lambda: p["LabelEmbed/bias"]),
        (r"mapping\.fc(\d+)\.weight",   lambda i: p[f"Mapping{i}/weight"].transpose()),
        (r"mapping\.fc(\d+)\.bias",     lambda i: p[f"Mapping{i}/bias"]),
        (r"b4\.conv\.weight",           lambda: _tf_conv(p["4x4/Conv/weight"])),
        (r"b4\.conv\.bias",             lambda: p["4x4/Conv/bias"]),
        # TF flattens NCHW activations in the same C, H, W order as PyTorch: a plain transpose suffices.
        (r"b4\.fc\.weight",             lambda: p["4x4/Dense0/weight"].transpose()),
        (r"b4\.fc\.bias",               lambda: p["4x4/Dense0/bias"]),
        (r"b4\.out\.weight",            lambda: p["Output/weight"].transpose()),
        (r"b4\.out\.bias",              lambda: p["Output/bias"]),
        (r".*\.resample_filter",        None),
    ]
    # fmt: on
    _populate_module_params(D, rules)
    return D


# ----------------------------------------------------------------------------
# Loading


def _is_tf_pickle(data):
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, _TFNetworkStub) for net in data)


def _convert_tf_networks(tf_G, tf_D, tf_Gs):
    """Convert TensorFlow-era `(G, D, Gs)` stubs into a dict with PyTorch `G`, `D`, `G_ema` networks."""
    G = convert_tf_generator(tf_G)
    D = convert_tf_discriminator(tf_D)
    G_ema = convert_tf_generator(tf_Gs)
    return dict(G=G, D=D, G_ema=G_ema)


def _force_fp16_network(key, net):
    """`net` rebuilt with fp16 settings forced into its constructor kwargs (or `net` itself if nothing changes)."""
    kwargs = copy.deepcopy(net.init_kwargs)
    if key.startswith("G"):
        kwargs.synthesis_kwargs = dnnlib.EasyDict(kwargs.get("synthesis_kwargs", {}))
        kwargs.synthesis_kwargs.num_fp16_res = _FORCED_NUM_FP16_RES
        kwargs.synthesis_kwargs.conv_clamp = _FORCED_CONV_CLAMP
    if key.startswith("D"):
        kwargs.num_fp16_res = _FORCED_NUM_FP16_RES
        kwargs.conv_clamp = _FORCED_CONV_CLAMP
    if kwargs == net.init_kwargs:
        return net
    new = type(net)(**kwargs).eval().requires_grad_(False)
    misc.copy_params_and_buffers(net, new, require_all=True)
    return new


def _tell(f):
    """Current position of `f`, or None for streams that cannot tell."""
    try:
        return f.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _not_a_network_pickle(f, reason):
    """The one-line error for `f` (named when the file object knows its name)."""
    name = getattr(f, "name", None)
    prefix = f"{name}: " if name is not None else ""
    reason = " ".join(reason.split())  # some unpickler messages span lines
    return UnsupportedPickleError(f"{prefix}not a network pickle ({reason})")


def _unpickle(f):
    """Unpickle `f` with the legacy unpickler; malformed or foreign data becomes `UnsupportedPickleError`."""
    start = _tell(f)
    try:
        return _LegacyUnpickler(f).load()
    except EOFError as exc:
        end = _tell(f)
        if start is None or end is None:
            reason = "file is empty or truncated"
        else:
            reason = "file is empty" if end == start else "truncated"
        raise _not_a_network_pickle(f, reason) from exc
    except pickle.UnpicklingError as exc:
        reason = "truncated" if "truncated" in str(exc) else f"not a pickle: {exc}"
        raise _not_a_network_pickle(f, reason) from exc
    except _MissingGlobalError as exc:
        raise _not_a_network_pickle(f, str(exc)) from exc.__cause__
    except (ValueError, TypeError, OverflowError, MemoryError, IndexError) as exc:
        # Only errors raised by the unpickler itself (no deeper Python frame) mean malformed bytes; errors from
        # code the pickle runs (embedded network source, tensor rebuilding) keep their own type and traceback.
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            raise
        raise _not_a_network_pickle(f, f"corrupt pickle data: {type(exc).__name__}: {exc}") from exc


def _check_network_dict(f, data):
    """Raise `UnsupportedPickleError` unless `data` has the keys and value types of a network pickle."""
    if not isinstance(data, dict):
        raise _not_a_network_pickle(
            f, f"a {type(data).__name__}, not a dict with G, D, G_ema or a TensorFlow-era (G, D, Gs) tuple"
        )
    for key in _NETWORK_KEYS:
        if key not in data:
            raise _not_a_network_pickle(f, f"a dict without the key {key!r}")
        if not isinstance(data[key], torch.nn.Module):
            raise _not_a_network_pickle(f, f"{key} is a {type(data[key]).__name__}, not a torch.nn.Module")
    if not isinstance(data["training_set_kwargs"], (dict, type(None))):
        kind = type(data["training_set_kwargs"]).__name__
        raise _not_a_network_pickle(f, f"training_set_kwargs is a {kind}, not a dict or None")
    if not isinstance(data["augment_pipe"], (torch.nn.Module, type(None))):
        kind = type(data["augment_pipe"]).__name__
        raise _not_a_network_pickle(f, f"augment_pipe is a {kind}, not a torch.nn.Module or None")


def load_network_pkl(f, force_fp16=False):
    """Load a network pickle from the open binary file `f`.

    Returns a dict with (at least) `G`, `D`, `G_ema` (`torch.nn.Module`), `training_set_kwargs` (dict or None) and
    `augment_pipe` (`torch.nn.Module` or None). TensorFlow-era `(G, D, Gs)` pickles are converted (`Gs` becomes
    `G_ema`). With `force_fp16`, the networks are rebuilt from their constructor kwargs with
    `num_fp16_res=4, conv_clamp=256` and their parameters/buffers copied over by name.

    A file that is empty, truncated, not a pickle, or not a network pickle (missing keys, values of the wrong
    type) raises `UnsupportedPickleError` with a one-line message naming the file (when `f` has a `name`).
    """
    data = _unpickle(f)

    if _is_tf_pickle(data):
        data = _convert_tf_networks(*data)
    if isinstance(data, dict):
        for key in _OPTIONAL_KEYS:
            data.setdefault(key, None)
    _check_network_dict(f, data)

    if force_fp16:
        for key in _NETWORK_KEYS:
            data[key] = _force_fp16_network(key, data[key])
    return data


def cli_load_network_pkl(url, force_fp16=False):
    """`load_network_pkl` of a path or URL for the command-line tools.

    Unreadable or unsupported files become `click.ClickException` (printed as `Error: ...`, exit status 1).
    """
    try:
        with dnnlib.util.open_url(url) as f:
            try:
                return load_network_pkl(f, force_fp16=force_fp16)
            except UnsupportedPickleError as exc:
                # Downloads are read from memory (no file name): name the URL instead.
                named = getattr(f, "name", None) is not None
                raise click.ClickException(str(exc) if named else f"{url}: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"Cannot read network pickle {url}: {exc}") from exc


def check_output_file(path, option):
    """Fail early (`click.ClickException`) if the file `path` of `option` cannot be written."""
    if os.path.isdir(path):
        raise click.ClickException(f"{option} {path} is a directory; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.ClickException(f"{option} {path}: the folder {folder} does not exist")
    target = path if os.path.exists(path) else folder
    if not os.access(target, os.W_OK):
        raise click.ClickException(f"{option} {path}: {target} is not writable")


# ----------------------------------------------------------------------------
# Command line


@click.command()
@click.option("--source", help="Input pickle: local path, file:// URL or http(s) URL", required=True, metavar="PATH")
@click.option("--dest", help="Where to write the converted pickle", required=True, metavar="PATH")
@click.option(
    "--force-fp16",
    help="Rebuild the networks with FP16 layers (num_fp16_res=4, conv_clamp=256)",
    type=bool,
    default=False,
    show_default=True,
)
def convert_network_pickle(source, dest, force_fp16):
    """Rewrite a TensorFlow-era (or native) network pickle as a pickle of this project's PyTorch networks.

    Works for StyleGAN2 (configs E and F) and StyleGAN2-ADA networks written by the TensorFlow code, with the
    orig, skip and resnet architectures. Networks of other kinds (StyleGAN1, StyleGAN2 configs A-D and the
    alternative methods compared in the ADA paper) are rejected with an error.

    Example (an official StyleGAN2 LSUN Cat network):

    \b
    python legacy.py \\
        --source=https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-cat-config-f.pkl \\
        --dest=stylegan2-cat-config-f.pkl
    """
    check_output_file(dest, "--dest")
    print(f'Loading "{source}"...')
    data = cli_load_network_pkl(source, force_fp16=force_fp16)
    print(f'Saving "{dest}"...')
    try:
        with open(dest, "wb") as f:
            pickle.dump(data, f)
    except OSError as exc:
        raise click.ClickException(f"Cannot write --dest {dest}: {exc}") from exc
    print("Done.")


if __name__ == "__main__":
    convert_network_pickle()
