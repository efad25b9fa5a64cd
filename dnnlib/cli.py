"""Parameter types shared by the command-line scripts (click)."""

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
