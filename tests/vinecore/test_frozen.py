"""vinecore._frozen.fast_init: the same constructor as the dataclass's, still frozen, only cheaper."""

import dataclasses

import pytest

from ddr import _reduction
from vinecore import Statistics, _events, _runtime, _state
from vinecore._frozen import fast_init

HOT = [_events.TaskSubmitted, _events.CancelRequested, _events.WorkerJoined, _events.WorkerRemoved,
       _events.TaskFinished, _events.FileForgotten, _events.Dispatch, _events.Kill, _events.Complete,
       _events.Transition, _runtime.TaskSpec, Statistics, _runtime.Outcome, _state.SchedulerCounts,
       _reduction.Capacity, _reduction.JobEnded, _reduction.CancelRun, _reduction.Submit, _reduction.CancelJob,
       _reduction.Release, _reduction.Finalize, _reduction.Notice, _reduction.RunEnded]


def _pair():
    def make():
        @dataclasses.dataclass(frozen=True, slots=True)
        class Msg:
            a: int
            b: str = "b"
            c: dict = dataclasses.field(default_factory=dict)
            d: int = dataclasses.field(default=4, kw_only=True)
        return Msg
    return make(), fast_init(make())


@pytest.mark.parametrize("args,kwargs", [((1,), {}), ((1, "x"), {}), ((1, "x", {"k": 1}), {"d": 7}),
                                         ((), {"a": 2, "c": {}}), ((), {})])
def test_same_constructor_as_the_dataclass(args, kwargs):
    plain, fast = _pair()
    try:
        want = plain(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            fast(*args, **kwargs)
        return
    got = fast(*args, **kwargs)
    assert dataclasses.astuple(got) == dataclasses.astuple(want)
    assert repr(got).split("(", 1)[1] == repr(want).split("(", 1)[1]


def test_default_factories_give_each_instance_its_own_value():
    _, fast = _pair()
    assert fast(1).c is not fast(1).c
    with pytest.raises(TypeError):
        fast(1, "x", {}, 5)  # d is keyword-only


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__qualname__)
def test_hot_messages_stay_frozen_and_rebuild_field_by_field(cls):
    fields = dataclasses.fields(cls)
    values = {f.name: (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING else f"v-{f.name}")
              for f in fields}
    obj = cls(**values)
    assert {f.name: getattr(obj, f.name) for f in fields} == values
    assert dataclasses.replace(obj) == obj
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, fields[0].name, "changed")
    if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in fields[1:]):
        assert cls(values[fields[0].name]) == cls(**{fields[0].name: values[fields[0].name]})


def test_refuses_what_it_cannot_speed_up():
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match="slots=True"):
        fast_init(NoSlots)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self):
            pass

    with pytest.raises(TypeError, match="__post_init__"):
        fast_init(Checked)
