"""A `peft` that is surgery: PEFT's test suite imports this and runs against surgery.

Top-level names are surgery's public names (re-exports only). Sub-modules the tests import
(`peft.tuners.lora.layer`, `peft.utils.other`, ...) are made on demand: each name resolves through
`_mapping.MAPPED` to surgery's equivalent, or to a stand-in that raises on use (see _placeholders).
Nothing here implements PEFT behaviour: where surgery lacks something, the tests that need it fail.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import surgery as _surgery

from ._mapping import resolve as _resolve

__version__ = _surgery.__version__


def __getattr__(name: str):
    return _resolve("peft", name)


def __dir__():
    return sorted(set(globals()) | set(dir(_surgery)))


class _ShimModule(types.ModuleType):
    """A peft sub-module whose attributes resolve lazily through the mapping."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _resolve(self.__name__, name)
        setattr(self, name, value)
        return value


_OWN_FILES = {"peft._mapping", "peft._placeholders", "peft._scope", "peft._glue"}
# PEFT modules whose counterpart is one surgery module: the test gets that module itself (so a monkeypatch of
# one of its globals reaches surgery's code).
_ALIASES = {"peft.config": "surgery.config.base"}


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("peft.") and fullname not in _OWN_FILES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        if spec.name in _ALIASES:
            return importlib.import_module(_ALIASES[spec.name])
        module = _ShimModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass   # aliases are surgery's modules, already executed; shim modules fill in lazily


sys.meta_path.insert(0, _ShimFinder())
