"""Tests for dnnlib / dnnlib.util (docs/compatibility.md, "Foundation"). No test touches the network."""

import copy
import hashlib
import io
import json
import os
import pickle
import sys

import numpy as np
import pytest
import requests

import dnnlib
from dnnlib import util

# ----------------------------------------------------------------------------
# Package surface and EasyDict


def test_package_reexports():
    assert dnnlib.EasyDict is util.EasyDict
    assert dnnlib.make_cache_dir_path is util.make_cache_dir_path
    assert dnnlib.util is util


def test_api_that_pickles_and_users_rely_on():
    """The names docs/compatibility.md, "Foundation" promises (the rest of the reference's dnnlib.util is gone)."""
    kept = [
        "EasyDict", "Logger", "set_cache_dir", "make_cache_dir_path", "format_time", "get_module_from_obj_name",
        "get_obj_from_module", "get_obj_by_name", "call_func_by_name", "construct_class_by_name", "is_url",
        "open_url", "DownloadError", "url_cache_path",
    ]  # fmt: skip
    assert [name for name in kept if not hasattr(util, name)] == []


def test_easydict_attribute_access():
    d = dnnlib.EasyDict(a=1)
    assert d.a == 1
    d.b = 2
    assert d["b"] == 2 and "b" not in d.__dict__
    del d.a
    assert "a" not in d
    with pytest.raises(AttributeError, match="missing"):
        d.missing
    assert not hasattr(d, "missing")
    assert getattr(d, "__setstate__", None) is None
    with pytest.raises(KeyError):
        del d.missing


def test_easydict_is_a_plain_dict_otherwise():
    d = dnnlib.EasyDict(a=1, nested=dnnlib.EasyDict(x=[1, 2]))
    assert repr(dnnlib.EasyDict(a=1)) == "{'a': 1}"
    assert d == {"a": 1, "nested": {"x": [1, 2]}}
    assert json.dumps(d) == '{"a": 1, "nested": {"x": [1, 2]}}'
    assert dict(**d) == d and list(d) == ["a", "nested"]
    assert d.keys is not None and callable(d.items)  # real methods win over items
    d["items"] = "shadowed?"
    assert callable(d.items)


def test_easydict_instance_dict_takes_precedence():
    d = dnnlib.EasyDict(a=1)
    d.__dict__["a"] = "attr"  # e.g. state restored into __dict__ by unpickling a legacy object
    assert d.a == "attr" and d["a"] == 1


def test_easydict_pickle_and_copy():
    d = dnnlib.EasyDict(a=1, b=[1, 2])
    data = pickle.dumps(d, protocol=2)
    assert b"dnnlib.util" in data and b"EasyDict" in data
    loaded = pickle.loads(data)
    assert type(loaded) is dnnlib.EasyDict and loaded == d and loaded.b == [1, 2]
    assert copy.copy(d) == d and type(copy.copy(d)) is dnnlib.EasyDict
    deep = copy.deepcopy(d)
    deep.b.append(3)
    assert d.b == [1, 2]


# ----------------------------------------------------------------------------
# Logger


@pytest.fixture()
def fake_console(monkeypatch):
    """Returns a function installing fresh StringIO streams as sys.stdout/stderr (restored after the test).

    It must be called inside the test body: pytest re-installs its own capture streams between setup and call.
    """

    def install():
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        return out, err

    return install


def test_logger_tees_and_merges_stderr(fake_console, tmp_path):
    out, err = fake_console()
    log_path = tmp_path / "log.txt"
    logger = dnnlib.util.Logger(file_name=str(log_path), file_mode="w", should_flush=True)
    assert sys.stdout is logger and sys.stderr is logger
    print("hello")
    sys.stderr.write("oops\n")
    logger.write(b"bytes\n")
    logger.write("")
    assert log_path.read_text() == "hello\noops\nbytes\n"
    logger.close()
    assert sys.stdout is out and sys.stderr is err
    assert out.getvalue() == "hello\noops\nbytes\n" and err.getvalue() == ""
    assert logger.file is None


def test_logger_append_mode_and_context_manager(fake_console, tmp_path):
    out, _err = fake_console()
    log_path = tmp_path / "log.txt"
    log_path.write_text("old\n")
    with dnnlib.util.Logger(file_name=str(log_path), file_mode="a") as logger:
        assert sys.stdout is logger
        print("new")
    assert sys.stdout is out
    assert log_path.read_text() == "old\nnew\n"


def test_logger_nesting_out_of_order_close(fake_console):
    out, err = fake_console()
    outer = dnnlib.util.Logger()
    inner = dnnlib.util.Logger()
    print("x")
    outer.close()  # not installed any more: must not touch sys.stdout
    assert sys.stdout is inner
    inner.close()
    assert sys.stdout is outer and sys.stderr is outer  # what inner remembered
    assert out.getvalue() == "x\n"


def test_logger_forwards_stream_attributes(fake_console):
    fake_console()
    with dnnlib.util.Logger() as logger:
        assert logger.isatty() is False
        assert logger.writable()


# ----------------------------------------------------------------------------
# Cache directory


@pytest.fixture()
def clean_cache_env(monkeypatch):
    monkeypatch.setattr(util, "_dnnlib_cache_dir", None)
    for name in ("DNNLIB_CACHE_DIR", "HOME", "USERPROFILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_make_cache_dir_path_rules(clean_cache_env, tmp_path):
    import tempfile

    mp = clean_cache_env
    assert util.make_cache_dir_path("x") == os.path.join(tempfile.gettempdir(), ".cache", "dnnlib", "x")
    mp.setenv("USERPROFILE", "/win/user")
    assert util.make_cache_dir_path("a", "b") == os.path.join("/win/user", ".cache", "dnnlib", "a", "b")
    mp.setenv("HOME", "/home/me")
    assert util.make_cache_dir_path("downloads") == os.path.join("/home/me", ".cache", "dnnlib", "downloads")
    mp.setenv("DNNLIB_CACHE_DIR", "/env/cache")
    assert util.make_cache_dir_path("gan-metrics") == os.path.join("/env/cache", "gan-metrics")
    util.set_cache_dir(str(tmp_path))
    assert util.make_cache_dir_path() == str(tmp_path)
    assert dnnlib.make_cache_dir_path("d") == os.path.join(str(tmp_path), "d")
    util.set_cache_dir(None)
    assert util.make_cache_dir_path("d") == os.path.join("/env/cache", "d")
    assert not os.path.exists("/env/cache")


# ----------------------------------------------------------------------------
# Small helpers


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.5, "0s"),
        (1.5, "2s"),
        (2.5, "2s"),
        (59.4, "59s"),
        (61, "1m 01s"),
        (59.6, "1m 00s"),
        (3599.5, "1h 00m 00s"),
        (86399, "23h 59m 59s"),
        (86400, "1d 00h 00m"),
        (90061, "1d 01h 01m"),
        (1e6, "11d 13h 46m"),
    ],
)
def test_format_time(seconds, text):
    assert util.format_time(seconds) == text


# ----------------------------------------------------------------------------
# Name lookup


def test_get_module_from_obj_name():
    import posixpath

    import torch

    assert util.get_module_from_obj_name("torch.optim.Adam") == (torch.optim, "Adam")
    assert util.get_module_from_obj_name("os.path") == (posixpath, "")
    assert util.get_module_from_obj_name("np.random.RandomState") == (np.random, "RandomState")
    assert util.get_obj_by_name("np.float32") is np.float32
    assert util.get_obj_by_name("dnnlib.util.EasyDict.__name__") == "EasyDict"
    assert util.get_obj_from_module(util, "") is util


def test_get_module_from_obj_name_errors(tmp_path, monkeypatch):
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        util.get_module_from_obj_name("no_such_module_xyz.thing")
    with pytest.raises(AttributeError):
        util.get_module_from_obj_name("dnnlib.util.NoSuchThing")
    pkg = tmp_path / "brokenpkg_for_dnnlib_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="no_such_dependency_xyz"):
        util.get_module_from_obj_name("brokenpkg_for_dnnlib_test.Thing")


def test_call_and_construct_by_name():
    assert util.call_func_by_name(4, func_name="math.sqrt") == 2.0
    d = util.construct_class_by_name(class_name="dnnlib.EasyDict", a=1)
    assert type(d) is dnnlib.EasyDict and d == {"a": 1}  # class_name is consumed
    with pytest.raises(AssertionError):
        util.call_func_by_name()
    with pytest.raises(AssertionError):
        util.call_func_by_name(func_name="math.pi")


# ----------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    "obj, allow_file, expected",
    [
        ("http://localhost/x", False, False),
        ("ftp://a.b/c", False, True),
        ("HTTP://a.b/c", False, True),
        ("https://nvlabs-fi-cdn.nvidia.com/x/y.pkl", False, True),
        ("file:///data/a", False, False),
        ("file:///data/a", True, True),
        ("no scheme", False, False),
        (42, False, False),
    ],
)
def test_is_url(obj, allow_file, expected):
    assert util.is_url(obj, allow_file_urls=allow_file) is expected


def test_open_url_local_and_file_urls(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"payload")
    assert util.open_url(str(path), return_filename=True) == str(path)
    with util.open_url(str(path)) as f:
        assert f.read() == b"payload"
    assert util.open_url(f"file://{path}", return_filename=True) == str(path)
    assert util.open_url(f"file://somehost{path}", return_filename=True) == str(path)
    with util.open_url(f"file://{path}") as f:
        assert f.read() == b"payload"
    assert util._file_url_to_path("file:///c:/foo.txt") == "c:/foo.txt"
    assert util._file_url_to_path("file:///data/a%20b") == "/data/a%20b"
    with pytest.raises(AssertionError):
        util.open_url(str(path), num_attempts=0)
    with pytest.raises(AssertionError):
        util.open_url(str(path), return_filename=True, cache=False)


class _FakeResponse:
    def __init__(self, content, headers=None, status=200):
        self.content = content
        self.headers = headers or {}
        self.status = status

    def raise_for_status(self):
        if self.status >= 400:
            raise requests.HTTPError(f"{self.status} error")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture()
def fake_http(monkeypatch):
    """Replace requests.Session.get; the test sets `responses` (a list of responses or exceptions)."""
    calls = []
    responses = []

    def fake_get(self, url, *args, **kwargs):
        calls.append(url)
        result = responses.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(requests.Session, "get", fake_get)
    return calls, responses


URL = "https://example.com/models/net.pkl"
URL_MD5 = hashlib.md5(URL.encode("utf-8")).hexdigest()


def test_open_url_cache_hit_does_not_download(tmp_path, fake_http):
    calls, _responses = fake_http
    cached = tmp_path / f"{URL_MD5}_whatever.pkl"
    cached.write_bytes(b"cached")
    assert util.open_url(URL, cache_dir=str(tmp_path), return_filename=True) == str(cached)
    with util.open_url(URL, cache_dir=str(tmp_path)) as f:
        assert f.read() == b"cached"
    assert calls == []


def test_open_url_cache_ignores_a_partial_download(tmp_path, fake_http):
    """A `.tmp` file left by a download killed midway (or still running elsewhere) is not a cached copy."""
    calls, _responses = fake_http
    (tmp_path / f"{URL_MD5}_whatever.pkl.1a2b3c.tmp").write_bytes(b"half")
    cached = tmp_path / f"{URL_MD5}_whatever.pkl"
    cached.write_bytes(b"cached")
    assert util.open_url(URL, cache_dir=str(tmp_path), return_filename=True) == str(cached)
    assert calls == []


def test_open_url_offline_error_names_cache_path(tmp_path, fake_http, monkeypatch, capsys):
    calls, responses = fake_http
    responses += [requests.ConnectionError("no route to host")] * 3
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(util, "_dnnlib_cache_dir", None)
    with pytest.raises(util.DownloadError) as info:
        util.open_url(URL, num_attempts=3)
    assert len(calls) == 3
    assert capsys.readouterr().out == f"Downloading {URL} ..... failed\n"
    message = str(info.value)
    expected_path = os.path.join(str(tmp_path), "downloads", f"{URL_MD5}_https___example.com_models_net.pkl")
    assert URL in message and expected_path in message
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, requests.ConnectionError)

    # Following the instructions makes the next call succeed without the network.
    os.makedirs(os.path.dirname(expected_path))
    with open(expected_path, "wb") as f:
        f.write(b"manual copy")
    with util.open_url(URL, verbose=False) as f:
        assert f.read() == b"manual copy"
    assert len(calls) == 3


def test_open_url_uncached_error_mentions_local_path(fake_http):
    _calls, responses = fake_http
    responses.append(requests.ConnectionError("offline"))
    with pytest.raises(util.DownloadError, match="local file path"):
        util.open_url(URL, num_attempts=1, cache=False, verbose=False)


def test_open_url_download_and_store(tmp_path, fake_http, capsys):
    calls, responses = fake_http
    body = b"x" * 10000
    responses += [
        requests.ConnectionError("flaky"),
        _FakeResponse(body, {"Content-Disposition": 'attachment; filename="net work.pkl"'}),
    ]
    path = util.open_url(URL, cache_dir=str(tmp_path), return_filename=True)
    assert path == os.path.join(str(tmp_path), f"{URL_MD5}_net_work.pkl")
    assert open(path, "rb").read() == body
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left behind
    assert capsys.readouterr().out == f"Downloading {URL} .... done\n"
    assert calls == [URL, URL]

    responses.append(_FakeResponse(b"fresh"))
    stream = util.open_url(URL, cache_dir=str(tmp_path / "other"), cache=False, verbose=False)
    assert isinstance(stream, io.BytesIO) and stream.read() == b"fresh"
    assert not (tmp_path / "other").exists()


def test_open_url_google_drive_cases(tmp_path, fake_http):
    calls, responses = fake_http
    nag = b'<a href="/uc?export=download&amp;confirm=abc&amp;id=1">Download anyway</a>'
    responses += [
        _FakeResponse(nag, {"Set-Cookie": "download_warning_123=abc"}),
        _FakeResponse(b"real data", {}),
    ]
    drive_url = "https://drive.google.com/uc?id=1"
    with util.open_url(drive_url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == b"real data"
    assert calls[1] == "https://drive.google.com/uc?export=download&confirm=abc&id=1"
    drive_md5 = hashlib.md5(drive_url.encode("utf-8")).hexdigest()
    assert [name.startswith(drive_md5 + "_") for name in os.listdir(tmp_path)] == [True]

    responses += [_FakeResponse(b"<title>Google Drive - Quota exceeded</title>")]
    with pytest.raises(util.DownloadError, match="quota exceeded"):
        util.open_url("https://drive.google.com/uc?id=2", num_attempts=1, cache=False, verbose=False)
    responses += [_FakeResponse(b""), _FakeResponse(b"", status=404)]
    with pytest.raises(util.DownloadError, match="404"):
        util.open_url("https://a.example.com/f", num_attempts=2, cache=False, verbose=False)


def test_open_url_google_drive_retry_details(tmp_path, fake_http, capsys):
    """A warning page is a failed try (a dot) that retries at the confirmation link; on the last try it is the error."""
    calls, responses = fake_http
    nag = b'<a href="/uc?export=download&amp;confirm=xyz&amp;id=3">Download anyway</a>'
    cookie = {"Set-Cookie": "download_warning_9=xyz"}
    responses += [_FakeResponse(nag, cookie), _FakeResponse(b"data", {"Content-Disposition": 'filename="f.pkl"'})]
    drive_url = "https://drive.google.com/uc?id=3"
    path = util.open_url(drive_url, cache_dir=str(tmp_path), return_filename=True)
    assert capsys.readouterr().out == f"Downloading {drive_url} .... done\n"
    assert os.path.basename(path) == hashlib.md5(drive_url.encode("utf-8")).hexdigest() + "_f.pkl"

    responses += [_FakeResponse(nag, cookie)]
    with pytest.raises(util.DownloadError, match=r"\(OSError: Google Drive virus checker nag\)"):
        util.open_url("https://drive.google.com/uc?id=4", num_attempts=1, cache=False, verbose=False)
    # Two confirmation links: not a page the loader understands, so the short body is taken as the file.
    two_links = nag + nag.replace(b"xyz", b"abc")
    responses += [_FakeResponse(two_links, cookie)]
    with util.open_url("https://drive.google.com/uc?id=5", cache=False, verbose=False) as f:
        assert f.read() == two_links
    # A short body that is not UTF-8 counts as a failed try.
    responses += [_FakeResponse(b"\xff\xfe"), _FakeResponse(b"\xff\xfe")]
    with pytest.raises(util.DownloadError, match="UnicodeDecodeError"):
        util.open_url("https://a.example.com/g", num_attempts=2, cache=False, verbose=False)
    assert calls[-2:] == ["https://a.example.com/g"] * 2
