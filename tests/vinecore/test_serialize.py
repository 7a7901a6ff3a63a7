"""vinecore._serialize: code pickled by value keeps its real file name (remote tracebacks point at it)."""

import importlib.util
import pickle
import sys
import traceback

import cloudpickle
import pytest

from vinecore import _serialize


def test_code_pickled_by_value_keeps_its_file_name(tmp_path):
    src = tmp_path / "user_module_for_serialize.py"
    src.write_text("def outer():\n    def inner(n):\n        return [1 / x for x in range(n)]\n    return inner\n")
    spec = importlib.util.spec_from_file_location("user_module_for_serialize", src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    try:
        data = _serialize.dumps(module.outer())
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[spec.name]
    fn = pickle.loads(data)  # rebuilt from the payload: the module is not importable any more
    assert fn.__code__.co_filename == str(src)
    try:
        fn(3)
    except ZeroDivisionError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
    assert [(f.filename, f.lineno) for f in frames[1:]] == [(str(src), 3)] * len(frames[1:])


class _PicklesInside:
    """Its reduction pickles something itself, while the outer dump is under way."""

    def __reduce__(self):
        return (pickle.loads, (_serialize.dumps({"inner": [1, 2, 3]}),))


def test_the_reused_pickler_starts_afresh_each_time_and_allows_nested_dumps():
    shared = [1, 2]
    first = _serialize.dumps((shared, shared))
    assert _serialize.dumps((shared, shared)) == first  # no memo carried over from the last dump
    assert pickle.loads(_serialize.dumps(_PicklesInside())) == {"inner": [1, 2, 3]}
    assert pickle.loads(_serialize.dumps([_PicklesInside(), 5])) == [{"inner": [1, 2, 3]}, 5]
    def plus_one(x):  # pickled by value: cloudpickle's per-dump state (globals) is reset too
        return x + 1

    fn = _serialize.dumps(plus_one)
    assert pickle.loads(fn)(1) == 2 and _serialize.dumps(plus_one) == fn
    import threading

    with pytest.raises(TypeError):
        _serialize.dumps(("before", threading.Lock()))  # fails half-way: the next dump is unaffected
    assert pickle.loads(_serialize.dumps(("after", "an error"))) == ("after", "an error")
