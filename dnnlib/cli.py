"""Parameter types shared by the command-line scripts (click)."""

import dataclasses
import types
import typing

import click


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
