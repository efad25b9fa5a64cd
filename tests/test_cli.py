"""dnnlib/cli.py: the click helpers the scripts share (parameter types, output-path checks, one-line errors)."""

import os

import click
import pytest
from click.testing import CliRunner

from dnnlib import cli


def test_errors_as_messages_turns_listed_errors_into_one_line():
    @click.command()
    @click.argument("kind")
    def command(kind):
        with cli.errors_as_messages(KeyError, ValueError, prefix="--thing: "):
            if kind == "value":
                raise ValueError("expected a number, found 'x'")
            if kind == "other":
                raise RuntimeError("not listed")

    result = CliRunner().invoke(command, ["value"])
    assert result.exit_code == 1 and result.stderr == "Error: --thing: expected a number, found 'x'\n"
    assert isinstance(result.exception, SystemExit)

    result = CliRunner().invoke(command, ["other"])
    assert isinstance(result.exception, RuntimeError)  # errors that are not listed keep their traceback

    assert CliRunner().invoke(command, ["fine"]).exit_code == 0


def test_errors_as_messages_keeps_the_cause_and_multi_line_messages():
    with pytest.raises(click.ClickException) as info:
        with cli.errors_as_messages(OSError):
            raise OSError("Could not download x.\nDownload it manually and save it as y.")
    assert info.value.format_message() == "Could not download x.\nDownload it manually and save it as y."
    assert isinstance(info.value.__cause__, OSError)


def test_output_path_checks_name_the_option(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(click.ClickException, match=f"^--out {a_file} exists and is not a folder$"):
        cli.check_outdir(str(a_file), option="--out")
    with pytest.raises(click.ClickException, match=f"^--outdir {a_file / 'a'} cannot be created: {a_file} is"):
        cli.make_outdir(str(a_file / "a"))
    cli.make_outdir(str(tmp_path / "new" / "nested"))
    assert (tmp_path / "new" / "nested").is_dir()
    cli.make_outdir(str(tmp_path / "new" / "nested"))  # existing folders are fine

    cli.check_output_file(str(tmp_path / "out.pkl"), "--dest")
    cli.check_output_file(str(a_file), "--dest")  # an existing file may be replaced
    with pytest.raises(click.ClickException, match=f"^--dest {tmp_path} is a directory; expected a file name$"):
        cli.check_output_file(str(tmp_path), "--dest")
    missing = tmp_path / "missing" / "out.pkl"
    with pytest.raises(click.ClickException, match=f"the folder {os.path.dirname(missing)} does not exist$"):
        cli.check_output_file(str(missing), "--dest")


def test_shared_image_tool_options():
    @click.command()
    @cli.truncation_option()
    @cli.noise_mode_option()
    def command(truncation_psi, noise_mode):
        print(truncation_psi, noise_mode)

    assert CliRunner().invoke(command, []).stdout == "1.0 const\n"
    assert CliRunner().invoke(command, ["--trunc", "0.5", "--noise-mode", "none"]).stdout == "0.5 none\n"
    help_text = " ".join(CliRunner().invoke(command, ["--help"]).stdout.split())
    assert "--trunc FLOAT Truncation strength (1 = none) [default: 1]" in help_text
    assert "--noise-mode [const|random|none]" in help_text and "[default: const]" in help_text
    result = CliRunner().invoke(command, ["--trunc", "inf"])
    assert result.exit_code == 2 and "Invalid value for '--trunc': inf is not a finite number" in result.stderr


def test_num_range_and_comma_separated_list():
    assert cli.parse_num_range("3-5") == [3, 4, 5] and cli.parse_num_range("5-3") == []
    assert cli.NumRange().convert([1, 2], None, None) == [1, 2]  # defaults that are already lists pass through
    with pytest.raises(click.BadParameter, match="seed 4294967296 is out of range"):
        cli.NumRange(seed=True).convert("4294967296", None, None)
    lists = cli.CommaSeparatedList()
    assert lists.convert("a,b", None, None) == ["a", "b"]
    assert lists.convert("None", None, None) == [] and lists.convert("", None, None) == []
