"""A faster ``__init__`` for the frozen, slotted dataclasses on the manager's hot path.

A frozen dataclass's generated ``__init__`` sets each field with
``object.__setattr__`` (its own ``__setattr__`` refuses), which costs about
three times what setting a slot through its member descriptor does. The
manager builds several such messages per task (events, actions, task specs),
so :func:`fast_init` replaces ``__init__`` with one that sets the slots
directly. Nothing else changes: the same parameters, defaults and default
factories, and instances stay frozen (assigning an attribute raises
``dataclasses.FrozenInstanceError``). Classes with ``__post_init__`` are refused.
"""

from __future__ import annotations

import dataclasses

__all__ = ["fast_init"]

_FACTORY = object()  # stands for "not given" where a field has a default factory


def fast_init(cls: type) -> type:
    """Decorate a ``@dataclass(frozen=True, slots=True)`` class (put it above the ``@dataclass`` line)."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__):
        raise TypeError(f"fast_init is for frozen dataclasses with slots=True; {cls.__qualname__} is not one")
    params = dataclasses.fields(cls)
    ns: dict[str, object] = {"_FACTORY": _FACTORY}
    args, kwonly, body = [], [], []
    for i, f in enumerate(params):
        if not f.init:
            raise TypeError(f"fast_init: field {f.name!r} of {cls.__qualname__} has init=False")
        descriptor = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        ns[f"_set{i}"] = descriptor.__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            ns[f"_default{i}"] = f.default
            param = f"{f.name}=_default{i}"
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"_factory{i}"] = f.default_factory
            param = f"{f.name}=_FACTORY"
            value = f"_factory{i}() if {f.name} is _FACTORY else {f.name}"
        else:
            param = f.name
        (kwonly if f.kw_only else args).append(param)
        body.append(f"    _set{i}(self, {value})")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"fast_init: {cls.__qualname__} has __post_init__; keep the dataclass __init__")
    signature = ", ".join(["self", *args, *(["*", *kwonly] if kwonly else [])])
    exec(f"def __init__({signature}):\n" + ("\n".join(body) or "    pass"), ns)  # noqa: S102 - our own text
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls
