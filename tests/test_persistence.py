"""Tests for torch_utils.persistence: pickles that carry their defining module's source (docs/compatibility.md,
"Foundation")."""

import copy
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import persistence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A module with a persistent network, a nested persistent child, a just-in-time decorated class and a plain helper
# function; written to a temporary directory so that it is importable only when that directory is on the path.
MODULE_SRC = textwrap.dedent(
    '''\
    """Temporary module for persistence tests."""
    import numpy as np
    import torch

    import dnnlib
    from torch_utils import misc, persistence

    GAIN = 3.0


    def helper(x):
        return x * GAIN


    @persistence.persistent_class
    class Child(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.arange(features, dtype=torch.float32))

        def forward(self, x):
            return x * self.weight


    @persistence.persistent_class
    class Net(torch.nn.Module):
        def __init__(self, features, mapping_kwargs={}):
            super().__init__()
            self.features = features
            self.gain = np.float64(0.5)
            self.child = Child(features)
            self.register_buffer("offset", torch.full([features], 2.0))
            self.mapping_kwargs = dnnlib.EasyDict(mapping_kwargs)

        def forward(self, x):
            misc.assert_shape(x, [None, self.features])
            return helper(self.child(x)) * self.gain + self.offset


    class Plain:
        def __init__(self, value, tag="t"):
            self.value = value
            self.tag = tag
    '''
)


@pytest.fixture()
def temp_module(tmp_path, monkeypatch):
    """Import MODULE_SRC under a unique name from a temporary directory; returns the module."""
    name = "persist_test_" + uuid.uuid4().hex[:8]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / f"{name}.py").write_text(MODULE_SRC)
    monkeypatch.syspath_prepend(str(src_dir))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


class _MetaCapture(pickle.Unpickler):
    """Unpickles persistent objects into `{'__persistent__': meta}` without executing any embedded source."""

    def find_class(self, module, name):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return lambda meta: {"__persistent__": meta}
        return super().find_class(module, name)


def _capture_meta(data):
    return _MetaCapture(io.BytesIO(data)).load()["__persistent__"]


def _globals_in_pickle(data):
    names = set()
    strings = []
    for opcode, arg, _pos in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        if opcode.name == "STACK_GLOBAL":
            names.add(tuple(strings[-2:]))
        if opcode.name == "GLOBAL":
            names.add(tuple(arg.split(" ")))
    return names


# ----------------------------------------------------------------------------


def test_decorator_basics(temp_module):
    Net = temp_module.Net
    assert persistence.is_persistent(Net) and Net in persistence._decorators
    assert Net.__name__ == "Net"
    assert persistence.persistent_class(Net) is Net
    net = Net(3, mapping_kwargs=dict(num_layers=2))
    assert type(net).__name__ == "Net"
    assert persistence.is_persistent(net) and persistence.is_persistent(net.child)
    assert not persistence.is_persistent(temp_module.Plain(1))
    assert not persistence.is_persistent({"unhashable": 1})

    class Sub(Net):
        pass

    assert not persistence.is_persistent(Sub(2))  # exact type only


def test_init_args_records(temp_module):
    kwargs = dict(mapping_kwargs=dict(num_layers=2))
    net = temp_module.Net(3, **kwargs)
    kwargs["mapping_kwargs"]["num_layers"] = 99  # the record is a deep copy
    assert net.init_args == (3,)
    assert type(net.init_kwargs) is dnnlib.EasyDict
    assert net.init_kwargs.mapping_kwargs == {"num_layers": 2}
    net.init_kwargs.mapping_kwargs["num_layers"] = 5  # accessors return copies
    assert net._init_kwargs == {"mapping_kwargs": {"num_layers": 2}} and type(net._init_kwargs) is dict


def test_reduce_form(temp_module):
    net = temp_module.Net(2)
    fields = net.__reduce__()
    assert len(fields) == 3 and fields[2] is None
    assert fields[0] is persistence._reconstruct_persistent_obj
    (meta,) = fields[1]
    assert type(meta) is dict
    assert list(meta) == ["type", "version", "module_src", "class_name", "state"]
    assert meta["type"] == "class" and meta["version"] == 6 and meta["class_name"] == "Net"
    assert meta["module_src"] == MODULE_SRC
    state = meta["state"]
    assert {"training", "_parameters", "_buffers", "_modules", "_init_args", "_init_kwargs"} <= set(state)
    assert state["_init_args"] == (2,) and state["_init_kwargs"] == {}
    assert list(state)[-3:] == ["mapping_kwargs", "_init_args", "_init_kwargs"]

    data = pickle.dumps(net)
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") in _globals_in_pickle(data)
    assert ("dnnlib.util", "EasyDict") in _globals_in_pickle(data)
    assert not any(module.startswith("persist_test_") for module, _ in _globals_in_pickle(data))
    captured = _capture_meta(data)
    assert captured["module_src"] == MODULE_SRC
    child_meta = captured["state"]["_modules"]["child"]["__persistent__"]
    assert child_meta["class_name"] == "Child" and child_meta["module_src"] == MODULE_SRC


def test_roundtrip_in_process_reuses_module(temp_module):
    torch.manual_seed(0)
    net = temp_module.Net(3)
    x = torch.randn(2, 3)
    loaded = pickle.loads(pickle.dumps(net))
    assert type(loaded) is type(net)  # identical source: the installed module is reused
    assert torch.equal(loaded(x), net(x))
    clone = copy.deepcopy(net)
    assert type(clone) is type(net) and clone.child is not net.child
    assert torch.equal(clone(x), net(x))


def test_unpicklable_state_fails_at_construction(temp_module):
    with pytest.raises(Exception, match="lambda|pickle"):
        temp_module.Net(2, mapping_kwargs=dict(fn=lambda: 0))


def test_pickleability_check_accepts_tensors_and_arrays(temp_module):
    Plain = persistence.persistent_class(temp_module.Plain)
    obj = Plain([torch.zeros(2), torch.nn.Parameter(torch.ones(1)), np.zeros(3)], tag={"k": (1.5, b"x")})
    assert obj.init_args[0][2].shape == (3,)


def test_just_in_time_decoration(temp_module):
    Plain = persistence.persistent_class(temp_module.Plain)
    assert Plain is not temp_module.Plain and Plain.__name__ == "Plain"
    obj = Plain(7, tag="x")
    meta = _capture_meta(pickle.dumps(obj))
    expected_state = {"value": 7, "tag": "x", "_init_args": (7,), "_init_kwargs": {"tag": "x"}}
    assert meta["class_name"] == "Plain" and meta["state"] == expected_state
    loaded = pickle.loads(pickle.dumps(obj))
    assert (loaded.value, loaded.tag, loaded.init_kwargs) == (7, "x", {"tag": "x"})


def test_persistent_subclass_of_persistent_class(temp_module):
    Net = temp_module.Net

    class Wider(Net):
        pass

    Wider.__module__ = temp_module.__name__
    temp_module.Wider = Wider
    try:
        Wider = persistence.persistent_class(Wider)
        obj = Wider(2)
        fields = obj.__reduce__()
        assert fields[0] is persistence._reconstruct_persistent_obj
        assert fields[1][0]["class_name"] == "Wider"
    finally:
        delattr(temp_module, "Wider")


# nn.Module bookkeeping as pickled by the PyTorch 1.7-era reference (newer hook dicts absent).
_OLD_TORCH_MODULE_STATE = {
    "training": True,
    "_parameters": {},
    "_buffers": {},
    "_non_persistent_buffers_set": set(),
    "_backward_hooks": {},
    "_forward_hooks": {},
    "_forward_pre_hooks": {},
    "_state_dict_hooks": {},
    "_load_state_dict_pre_hooks": {},
    "_modules": {},
}


def test_fresh_source_executes_in_private_module():
    src = textwrap.dedent(
        """\
        import sys
        import torch
        from torch_utils import persistence

        assert __name__.startswith("_imported_module_") and __name__ in sys.modules

        @persistence.persistent_class
        class Lone(torch.nn.Module):
            def __init__(self, k):
                super().__init__()
                self.k = k
        """
    )
    state = dict(_OLD_TORCH_MODULE_STATE, k=4, _init_args=(4,), _init_kwargs={})
    meta = dict(type="class", version=6, module_src=src, class_name="Lone", state=state)
    obj = persistence._reconstruct_persistent_obj(meta)
    module = sys.modules[type(obj).__bases__[0].__module__]  # the wrapper lives in persistence
    assert module.__name__.startswith("_imported_module_") and len(module.__name__) == len("_imported_module_") + 32
    assert persistence._module_to_src_dict[module] == src and persistence._src_to_module_dict[src] is module
    assert obj.k == 4 and obj.training
    # nn.Module.__setstate__ filled in the hook dicts that PyTorch 1.x pickles lack.
    assert obj._forward_hooks_with_kwargs == {} and obj._backward_pre_hooks == {}
    again = persistence._reconstruct_persistent_obj(copy.deepcopy(meta))
    assert type(again) is type(obj)  # each distinct source runs once per process
    assert _capture_meta(pickle.dumps(obj))["module_src"] == src

    with pytest.raises(AssertionError):
        persistence._reconstruct_persistent_obj(dict(meta, version=5))


def test_import_hooks(monkeypatch):
    monkeypatch.setattr(persistence, "_import_hooks", [])
    src = "from torch_utils import persistence\nVALUE = 1\n\n\n@persistence.persistent_class\nclass V:\n    pass\n"
    seen = []

    def patch_source(meta):
        seen.append((type(meta).__name__, type(meta.state).__name__, meta.class_name))
        meta.module_src = meta.module_src.replace("VALUE = 1", "VALUE = 2")
        return meta

    persistence.import_hook(patch_source)
    with pytest.raises(AssertionError):
        persistence.import_hook("not callable")
    obj = persistence._reconstruct_persistent_obj(
        dict(type="class", version=6, module_src=src, class_name="V", state={"a": 1})
    )
    assert seen == [("EasyDict", "EasyDict", "V")]
    assert sys.modules[type(obj).__bases__[0].__module__].VALUE == 2 and obj.a == 1

    persistence.import_hook(lambda meta: None)
    with pytest.raises(AssertionError):
        persistence._reconstruct_persistent_obj(dict(type="class", version=6, module_src=src, class_name="V", state={}))


def test_unpickle_in_fresh_interpreter_without_defining_module(temp_module, tmp_path):
    torch.manual_seed(1)
    net = temp_module.Net(4, mapping_kwargs=dict(num_layers=3)).eval()
    plain = persistence.persistent_class(temp_module.Plain)(5, tag="jit")
    x = torch.randn(2, 4)
    pkl_path = tmp_path / "objs.pkl"
    with open(pkl_path, "wb") as f:
        pickle.dump(dict(net=net, plain=plain, x=x, y=net(x).detach()), f)

    script = textwrap.dedent(
        """\
        import json, pickle, sys, torch
        from torch_utils import persistence
        with open(sys.argv[1], "rb") as f:
            data = pickle.load(f)
        net, plain = data["net"], data["plain"]
        assert not any(name.startswith("persist_test_") for name in sys.modules)
        repickled = pickle.dumps(net)
        print(json.dumps(dict(
            module=type(net).__bases__[0].__module__,
            name=type(net).__name__,
            child=type(net.child).__name__,
            same_module=len({type(o).__bases__[0].__module__ for o in (net, net.child, plain)}) == 1,
            persistent=persistence.is_persistent(net) and persistence.is_persistent(plain),
            training=net.training,
            features=net.features,
            gain_type=type(net.gain).__name__,
            mapping=dict(net.init_kwargs.mapping_kwargs),
            mapping_type=type(net.mapping_kwargs).__name__,
            max_err=float((net(data["x"]) - data["y"]).abs().max()),
            plain=[plain.value, plain.tag, plain.init_args[0]],
            repickled_src=pickle.loads(repickled).__reduce__()[1][0]["module_src"],
        )))
        """
    )
    workdir = tmp_path / "empty_cwd"
    workdir.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(pkl_path)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("_imported_module_")
    assert report["name"] == "Net" and report["child"] == "Child" and report["same_module"] and report["persistent"]
    assert report["training"] is False and report["features"] == 4 and report["gain_type"] == "float64"
    assert report["mapping"] == {"num_layers": 3} and report["mapping_type"] == "EasyDict"
    assert report["max_err"] == 0.0
    assert report["plain"] == [5, "jit", 5]
    assert report["repickled_src"] == MODULE_SRC


def test_failed_source_is_not_cached():
    """A source whose execution fails (e.g. it imports what is not installed) must fail the same way next time,
    not yield the half-executed module."""
    src = "import torch\nfrom torch_utils.ops import no_such_op_xyz\n\nclass Late(torch.nn.Module):\n    pass\n"
    meta = dict(type="class", version=6, module_src=src, class_name="Late", state={})
    for _attempt in range(2):
        with pytest.raises(ImportError, match="no_such_op_xyz"):
            persistence._reconstruct_persistent_obj(copy.deepcopy(meta))
    assert src not in persistence._src_to_module_dict
