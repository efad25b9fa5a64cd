"""Click helpers shared by the command-line scripts: parameter types, checks of output paths, and one-line errors.

The library below the scripts raises typed errors whose message already names the file or option, what was expected
and what was found. `errors_as_messages` turns them into click's `Error: <message>` line (exit status 1), so a bad
input never ends in a traceback. This module knows nothing about networks, datasets or metrics: it sits below
training/ and metrics/ and imports neither.
"""

import contextlib
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterator

import click

# ----------------------------------------------------------------------------------------------------------------------
# Options that generate.py and style_mixing.py declare alike

# The synthesis noise modes the networks accept, the tools' default first (the order the help text shows).
NOISE_MODE_CHOICES = ("const", "random", "none")


def truncation_option():
    """`--trunc` -> parameter `truncation_psi`: a finite float, default 1 (no truncation)."""
    return click.option(
        "--trunc",
        "truncation_psi",
        type=FiniteFloat(),
        help="Truncation strength (1 = none)",
        default=1,
        show_default=True,
    )


def noise_mode_option():
    """`--noise-mode` -> parameter `noise_mode`: one of NOISE_MODE_CHOICES, default `const`."""
    return click.option(
        "--noise-mode",
        help="Per-pixel noise: fixed buffers, fresh draws, or off",
        type=click.Choice(NOISE_MODE_CHOICES),
        default="const",
        show_default=True,
    )


def class_option():
    """`--class` -> parameter `class_value` (a string): a class index, or a class name the training set recorded."""
    return click.option(
        "--class",
        "class_value",
        help="Class of conditional networks: an index, or a class name the training set recorded",
        metavar="INDEX|NAME",
    )


def trust_pickle_option():
    """`--trust-pickle` -> parameter `trust_pickle` (a flag): let a network pickle run the code it carries."""
    return click.option(
        "--trust-pickle",
        is_flag=True,
        help="Run the code embedded in the network pickle (only for files you trust) "
        "[default: rebuild the networks from this project's classes]",
    )


def device_option():
    """`--device` -> parameter `device` (a string; resolve it with torch_utils.launch.resolve_device)."""
    return click.option(
        "--device",
        help="Where the network runs: auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps",
        type=str,
        default="auto",
        show_default=True,
        metavar="auto|cpu|cuda|cuda:N|mps",
    )


# ----------------------------------------------------------------------------------------------------------------------
# Output paths, checked before any long work starts


def check_outdir(outdir: str, option: str = "--outdir") -> None:
    """Fail when `outdir`, or the nearest of its parents that exists, is something other than a folder."""
    existing = os.path.abspath(outdir)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing):
        return
    if existing == os.path.abspath(outdir):
        raise click.ClickException(f"{option} {outdir} exists and is not a folder")
    raise click.ClickException(f"{option} {outdir} cannot be created: {existing} is not a folder")


def make_outdir(outdir: str, option: str = "--outdir") -> None:
    """Create `outdir` and its parents (fine if it exists); failures are a one-line error."""
    check_outdir(outdir, option)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"Cannot create {option} {outdir}: {exc}") from exc


def check_output_file(path: str, option: str) -> None:
    """Fail unless the file `path` given as `option` can be created or replaced."""
    if os.path.isdir(path):
        raise click.ClickException(f"{option} {path} is a directory; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.ClickException(f"{option} {path}: the folder {folder} does not exist")
    target = path if os.path.exists(path) else folder
    if not os.access(target, os.W_OK):
        raise click.ClickException(f"{option} {path}: {target} is not writable")


# ----------------------------------------------------------------------------------------------------------------------
# Typed library errors -> one-line messages


@contextlib.contextmanager
def errors_as_messages(*error_types: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Inside the block, an error of one of `error_types` becomes `Error: <prefix><its message>`, exit status 1.

    The message is the error's own text (library errors name the file and what is wrong with it); `prefix` names
    the option it came from where the message does not, e.g. `prefix="--network: "`.
    """
    try:
        yield
    except error_types as exc:
        raise click.ClickException(f"{prefix}{exc}") from exc


@contextlib.contextmanager
def usage_errors(*error_types: type[BaseException]) -> Iterator[None]:
    """Inside the block, an error of one of `error_types` is a usage error (click's `Error:` line, exit status 2)."""
    try:
        yield
    except error_types as exc:
        raise click.UsageError(str(exc)) from exc


# ----------------------------------------------------------------------------------------------------------------------
# Parameter types


# Seeds select numpy's legacy RandomState stream, which accepts seeds 0 .. 2**32 - 1 only.
MAX_SEED = 2**32 - 1


def _check_seeds(values: list[int]) -> None:
    for value in values:
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"seed {value} is out of range 0..{MAX_SEED}")


def parse_num_range(text: str, seed: bool = False) -> list[int]:
    """`a-b` -> [a, ..., b] (empty when b < a); otherwise a comma-separated list of integers.

    Mixed forms such as `0-3,7` fail (`0-3` is not an integer), as in the reference's parser. With `seed=True`,
    every value must be a valid seed (for a range: both ends, checked before the list is built); errors are
    `ValueError` with a one-line message.
    """
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        if seed:
            _check_seeds([first, last])
        return list(range(first, last + 1))
    values = [int(piece) for piece in text.split(",")]
    if seed:
        _check_seeds(values)
    return values


class NumRange(click.ParamType):
    """A `parse_num_range` option value (`--seeds 0-7`, `--styles 0,1,2`); `seed=True` range-checks seeds.

    A range that names no value (`5-3`) is a usage error: every option of this type selects what to compute, so an
    empty one would silently do nothing.
    """

    name = "num_range"

    def __init__(self, seed: bool = False):
        self.seed = seed

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = parse_num_range(value, seed=self.seed)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not values:
            self.fail("the range names no value (in a-b, b must not be less than a)", param, ctx)
        return values


class FiniteFloat(click.types.FloatParamType):
    """A float option that rejects nan and +-inf (a non-finite truncation renders black images)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        return number


class CommaSeparatedList(click.ParamType):
    """`a,b,c` -> ['a', 'b', 'c']; `none` (any case) or an empty string -> []."""

    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        if value is None or value.lower() == "none" or value == "":
            return []
        return value.split(",")


# ----------------------------------------------------------------------------------------------------------------------
# Click options generated from the fields of a dataclass, so that a command's options are declared once.


def options_from_dataclass(cls: type) -> typing.Callable:
    """Decorator adding one click option per field of dataclass `cls` that has a "cli" metadata entry, in field order.

    The option is `--<field name, _ written as ->` and the parameter is the field name. The "cli" entry is a dict:
        help          help text
        show_default  False (nothing), True (the field's default) or the text to show; appended as " [default: ...]"
        metavar, required, is_flag   as for click.option
        choices       the accepted values (click.Choice)
        short         an extra short flag, e.g. "-n"
    The click type comes from the annotation: int, float, bool (click's BOOL: 1/0, true/false, yes/no, ...), str or
    list[str] (CommaSeparatedList), each optionally `| None`. Click gets no defaults (the dataclass holds them): an
    option left out is ParameterSource.DEFAULT with the value None (False for a flag).
    """
    hints = typing.get_type_hints(cls)
    declared = [field for field in dataclasses.fields(cls) if "cli" in field.metadata]

    def click_type(field):
        annotation = hints[field.name]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if annotation in (int, float, bool, str):
            return annotation
        if annotation == list[str]:
            return CommaSeparatedList()
        raise TypeError(f"{cls.__name__}.{field.name}: no click type for the annotation {annotation}")

    def shown_default(field, show):
        if isinstance(show, str):
            return show
        value = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if isinstance(value, bool):
            return str(value).lower()
        return ",".join(value) if isinstance(value, list | tuple) else str(value)

    def option(field):
        spec = dict(field.metadata["cli"])
        flags = [spec.pop("short")] if "short" in spec else []
        flags += ["--" + field.name.replace("_", "-"), field.name]
        show = spec.pop("show_default", False)
        if show is not False:
            spec["help"] = f"{spec.get('help', '')} [default: {shown_default(field, show)}]"
        choices = spec.pop("choices", None)
        if not spec.get("is_flag", False):
            spec["type"] = click_type(field) if choices is None else click.Choice(choices)
        return click.option(*flags, **spec)

    def decorate(command):
        for field in reversed(declared):  # The last decorator applied is the first option listed.
            command = option(field)(command)
        return command

    return decorate
