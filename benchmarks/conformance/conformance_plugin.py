"""pytest plugin for the conformance run: one environment for both runs, outcomes recorded per test.

- transformers is told peft is absent, in both runs: with the shim on the path it would otherwise import
  the shim as its own peft integration (e.g. in `from transformers import Trainer`).
- A test that raised the shim's OutOfScope (a PEFT method or option surgery does not claim) is reported as
  skipped with the reason "out of scope: ...".
- Each test's outcome and, for a failure, the exception line are written as JSON to $CONFORMANCE_RESULTS.
"""
from __future__ import annotations

import functools
import json
import os

import pytest


def _hide_peft_from_transformers() -> None:
    import transformers.utils.import_utils as import_utils

    original = import_utils._is_package_available

    def is_package_available(pkg_name, return_version=False):
        if pkg_name == "peft":
            return (False, "N/A")
        return original(pkg_name, return_version)

    import_utils._is_package_available = is_package_available
    cache_clear = getattr(import_utils.is_peft_available, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    assert not import_utils.is_peft_available()


def _no_network() -> None:
    """Fail Hub requests at once: PEFT's tests turn offline mode off for a model's first use
    (testing_utils.hub_online_once), and huggingface_hub would retry each request with back-off for ~25 s.
    Files in the local Hub cache (hub_models.py) are then used as cached."""
    import types
    import time

    import huggingface_hub.utils._http as http

    httpx = http.httpx2

    class Unreachable(httpx.BaseTransport):
        def handle_request(self, request):
            raise httpx.ConnectError(f"no network in the conformance run: {request.url}", request=request)

    http.set_client_factory(lambda: httpx.Client(transport=Unreachable()))
    http.time = types.SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None})


_hide_peft_from_transformers()
_no_network()


def _exception_chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# OutOfScope: the shim's stand-ins; UnsupportedOptionError: surgery's refusal of a PEFT option it does not claim.
_OUT_OF_SCOPE_ERRORS = {"OutOfScope", "UnsupportedOptionError"}


def _out_of_scope(excinfo):
    for exc in _exception_chain(excinfo.value):
        if any(k.__name__ in _OUT_OF_SCOPE_ERRORS for k in type(exc).__mro__):
            return str(exc)
    return None


def _out_of_scope_param(value, depth: int = 0):
    """The name of an out-of-scope stand-in among a test's parameters (classes, instances, nested in lists)."""
    if depth > 3:
        return None
    stand_in = value if isinstance(value, type) else getattr(value, "_stand_in", None)
    if isinstance(stand_in, type) and type(stand_in).__name__ == "_StandInMeta" \
            and any(k.__name__ == "OutOfScope" for k in stand_in._error.__mro__):
        return stand_in._qualname
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _out_of_scope_param(item, depth + 1)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=None)
def _scope_module():
    """The shim's scope lists, loaded from their file (in the peft run, `peft` is the real one)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "shim" / "peft" / "_scope.py"
    spec = importlib.util.spec_from_file_location("_conformance_scope", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _out_of_scope_class(item):
    """A test class of a method surgery does not have (TestAdaLoraInitialization, TestPsoft...)."""
    cls = getattr(item, "cls", None)
    name = cls.__name__.lower() if cls is not None else ""
    for method in _scope_module().METHODS_NOT_IMPLEMENTED:
        if name.startswith(f"test{method.lower()}"):
            return f"{cls.__name__}: tests of {method}"
    return None


def pytest_collection_modifyitems(config, items):
    """A test parametrized with a method surgery does not claim is out of scope before it runs. With
    $CONFORMANCE_ONLY (a file of node ids), only those tests run (the CI slice)."""
    only = os.environ.get("CONFORMANCE_ONLY")
    if only:
        wanted = set(open(only).read().split("\n"))
        kept = [item for item in items if item.nodeid in wanted]
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
        items[:] = kept
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        found = _out_of_scope_param(list(params.values())) or _out_of_scope_class(item)
        if found:
            item.add_marker(pytest.mark.skip(reason=f"out of scope: {found}"))
            item.user_properties.append(("conformance", "out_of_scope"))
            item.user_properties.append(("reason", found))


def _reason(excinfo) -> str:
    exc = excinfo.value
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:400]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or call.excinfo.errisinstance((pytest.skip.Exception, KeyboardInterrupt)):
        return
    scope = _out_of_scope(call.excinfo)
    if scope is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"out of scope: {scope}")
        report.user_properties.append(("conformance", "out_of_scope"))
        report.user_properties.append(("reason", scope))
    elif report.failed:
        report.user_properties.append(("reason", _reason(call.excinfo)))


_RESULTS: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    props = dict(report.user_properties)
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed"})
    if props.get("conformance") == "out_of_scope":
        entry.update(outcome="out_of_scope", reason=props.get("reason", ""))
    elif report.failed and entry["outcome"] != "out_of_scope":
        entry.update(outcome="failed", reason=props.get("reason", f"{report.when} failed"))
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_collectreport(report):
    if report.failed:   # a test file that cannot be imported: recorded, so the counts cannot hide it
        _RESULTS[f"{report.nodeid}::<collection>"] = {"outcome": "failed", "reason": str(report.longrepr)[-400:]}


def pytest_sessionfinish(session):
    path = os.environ.get("CONFORMANCE_RESULTS")
    if not path or hasattr(session.config, "workerinput"):   # the xdist controller writes; workers report to it
        return
    with open(path, "w") as f:
        json.dump(_RESULTS, f, indent=0, sort_keys=True)
