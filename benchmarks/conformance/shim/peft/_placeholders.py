"""Stand-ins for PEFT names surgery lacks, so a test file imports and each test meets the gap where it uses it.

Using a stand-in raises: `OutOfScope` for a method or option surgery does not claim (the runner reports the
test as out of scope), `MissingInSurgery` for an in-scope name surgery lacks (the test fails, naming it).
`isinstance(x, OutOfScopeStandIn)` is False rather than an error: nothing can be an instance of a method
surgery does not have, and generic test helpers ask that of every model.
"""
from __future__ import annotations


class OutOfScope(Exception):
    """A test used a PEFT method or option that surgery does not claim."""


class MissingInSurgery(AttributeError):
    """A test used an in-scope PEFT name that surgery does not provide."""


class OutOfScopeAttribute(OutOfScope, AttributeError):
    """An attribute of an out-of-scope stand-in: an AttributeError too, so getattr(x, name, default) and
    inspect.signature work on the stand-in at collection time."""


class _OutOfScopeInstance:
    """What calling an out-of-scope stand-in gives: test modules build such configs at import time (in their
    case tables), so construction succeeds and any use of the object raises OutOfScope."""

    def __init__(self, cls):
        object.__setattr__(self, "_stand_in", cls)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise OutOfScopeAttribute(f"{self._stand_in._qualname}(...).{attr}: not provided by surgery")

    def __setattr__(self, attr, value):
        raise OutOfScope(f"{self._stand_in._qualname}(...).{attr} = ...: not provided by surgery")

    def __repr__(self):
        return f"{self._stand_in.__name__}(<out of scope>)"


class _StandInMeta(type):
    def __call__(cls, *args, **kwargs):
        if cls._error is OutOfScope:
            return _OutOfScopeInstance(cls)
        raise cls._error(f"{cls._qualname} is not provided by surgery")

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        error = OutOfScopeAttribute if cls._error is OutOfScope else MissingInSurgery
        raise error(f"{cls._qualname}.{attr} is not provided by surgery")

    def __instancecheck__(cls, obj):
        if cls._error is OutOfScope:
            return isinstance(obj, _OutOfScopeInstance) and obj._stand_in is cls
        raise cls._error(f"isinstance(..., {cls._qualname}): not provided by surgery")

    def __subclasscheck__(cls, sub):
        if cls._error is OutOfScope:
            return False
        raise cls._error(f"issubclass(..., {cls._qualname}): not provided by surgery")


def stand_in(module: str, name: str, out_of_scope: bool) -> type:
    """A class standing for `module.name` that raises on use."""
    error = OutOfScope if out_of_scope else MissingInSurgery
    return _StandInMeta(name, (), {"_error": error, "_qualname": f"{module}.{name}", "__module__": module})
