"""Runs tests/python/test_*.py files on interpreters that have no pytest (pyenv's 3.6, 3.9, 3.12: RHEL 8, 9
and 10's Pythons; Debian packages pytest for its own 3.11 only).

It implements exactly the pytest subset these suites use, on the standard library alone and Python 3.6:
``@pytest.fixture`` (function, module and session scope, yield fixtures, fixtures asking for fixtures, from
conftest.py and the test file), ``@pytest.mark.parametrize`` (one or several names, ``ids`` as a list or a
function, stacked), ``pytest.raises`` (``match=``, ``as info`` → ``info.value``), and the ``tmp_path`` and
``tmp_path_factory`` fixtures. Anything else a test asks for is an error, never a skip.

Usage: python compat_runner.py TEST_FILE...   (tests/python/CMakeLists.txt registers one ctest test per file and
interpreter). Prints one line per test and closes with pytest's "N passed, N failed" line; exits 1 on any
failure and 5 when nothing was collected, as pytest does.
"""

import contextlib
import importlib.util
import inspect
import itertools
import os
import re
import shutil
import sys
import tempfile
import traceback
import types
from pathlib import Path


class _Fixture:
    def __init__(self, function, scope):
        self.function, self.scope = function, scope


def fixture(function=None, *, scope="function"):
    def mark(f):
        f._compat_fixture = _Fixture(f, scope)
        return f
    return mark(function) if function is not None else mark


def parametrize(argnames, argvalues, ids=None):
    names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
    values = [v if len(names) > 1 else (v,) for v in argvalues]
    if callable(ids):
        labels = ["-".join(str(ids(x)) for x in v) for v in values]
    elif ids is not None:
        labels = list(ids)
    else:
        labels = ["-".join(_label(x) for x in v) for v in values]

    def mark(f):
        f._compat_params = [(names, list(zip(labels, values)))] + getattr(f, "_compat_params", [])
        return f
    return mark


def _label(value):
    return str(value) if isinstance(value, (int, float, str, bool)) and len(str(value)) < 40 else type(value).__name__


class _RaisesInfo:
    value = None
    type = None


@contextlib.contextmanager
def raises(expected, *, match=None):
    info = _RaisesInfo()
    try:
        yield info
    except expected as e:
        info.value, info.type = e, type(e)
        if match is not None and not re.search(match, str(e)):
            raise AssertionError("{!r} does not match {!r}".format(str(e), match)) from None
    else:
        raise AssertionError("DID NOT RAISE {}".format(getattr(expected, "__name__", expected)))


def _pytest_module():
    module = types.ModuleType("pytest")
    module.fixture = fixture
    module.mark = types.SimpleNamespace(parametrize=parametrize)
    module.raises = raises
    module.ExitCode = types.SimpleNamespace(OK=0, TESTS_FAILED=1, NO_TESTS_COLLECTED=5)

    def fail(message=""):
        raise AssertionError(message)

    def skip(reason=""):  # under this runner, as under ctest's LUKSFORGE_NO_SKIPS, a skip is a failure
        raise AssertionError("skipped: " + reason)
    module.fail, module.skip = fail, skip
    return module


class _TmpPathFactory:
    def __init__(self, base):
        self.base, self.count = base, itertools.count()

    def mktemp(self, name, numbered=True):
        path = self.base / ("{}{}".format(name, next(self.count)) if numbered else name)
        path.mkdir(parents=True)
        return path


class _Session:
    def __init__(self, base):
        self.factory = _TmpPathFactory(base)
        self.fixtures = {}
        self.cache = {"session": {}, "module": {}}
        self.teardowns = {"session": [], "module": [], "function": []}

    def collect_fixtures(self, module):
        for value in vars(module).values():
            if hasattr(value, "_compat_fixture"):
                self.fixtures[value.__name__] = value._compat_fixture

    def value(self, name, test_values, function_cache):
        if name in test_values:
            return test_values[name]
        if name == "tmp_path_factory":
            return self.factory
        if name == "tmp_path":
            if name not in function_cache:
                function_cache[name] = self.factory.mktemp("test")
            return function_cache[name]
        if name not in self.fixtures:
            raise LookupError("fixture {!r} not found".format(name))
        definition = self.fixtures[name]
        cache = function_cache if definition.scope == "function" else self.cache[definition.scope]
        if name not in cache:
            arguments = {p: self.value(p, test_values, function_cache)
                         for p in inspect.signature(definition.function).parameters}
            result = definition.function(**arguments)
            if inspect.isgenerator(result):
                self.teardowns[definition.scope].append(result)
                result = next(result)
            cache[name] = result
        return cache[name]

    def finish(self, scope):
        errors = []
        while self.teardowns[scope]:
            generator = self.teardowns[scope].pop()
            try:
                next(generator)
            except StopIteration:
                pass
            except Exception:  # reported, and counted as a failure by the caller
                errors.append(traceback.format_exc())
        self.cache.get(scope, {}).clear()
        return errors


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _cases(function):
    params = getattr(function, "_compat_params", [])
    if not params:
        yield function.__name__, {}
        return
    for combination in itertools.product(*[[(names, case) for case in cases] for names, cases in params]):
        labels, values = [], {}
        for names, (label, row) in combination:
            labels.append(label)
            values.update(zip(names, row))
        yield "{}[{}]".format(function.__name__, "-".join(labels)), values


def run_file(session, path):
    passed = failed = 0
    module = _import(path, path.stem)
    session.collect_fixtures(module)
    tests = [v for k, v in vars(module).items() if k.startswith("test_") and inspect.isfunction(v)]
    tests.sort(key=lambda f: f.__code__.co_firstlineno)
    for function in tests:
        for name, values in _cases(function):
            function_cache = {}
            try:
                arguments = {p: session.value(p, values, function_cache)
                             for p in inspect.signature(function).parameters}
                function(**arguments)
                ok = True
            except Exception:
                ok = False
                print("{}::{} FAILED\n{}".format(path.name, name, traceback.format_exc()), flush=True)
            teardown_errors = session.finish("function")
            for error in teardown_errors:
                print("{}::{} teardown ERROR\n{}".format(path.name, name, error), flush=True)
            if ok and not teardown_errors:
                passed += 1
                print("{}::{} PASSED".format(path.name, name), flush=True)
            else:
                failed += 1
    errors = session.finish("module")
    for error in errors:
        print("{}: module teardown ERROR\n{}".format(path.name, error), flush=True)
    return passed, failed + len(errors)


def main(argv):
    files = [Path(a).resolve() for a in argv]
    if not files:
        print("usage: compat_runner.py TEST_FILE...", file=sys.stderr)
        return 4
    sys.modules["pytest"] = _pytest_module()
    sys.path.insert(0, str(files[0].parent))
    base = Path(tempfile.mkdtemp(prefix="luksforge-compat-"))
    session = _Session(base)
    print("compat_runner: Python {} ({})".format(sys.version.split()[0], sys.executable), flush=True)
    passed = failed = 0
    try:
        session.collect_fixtures(_import(files[0].parent / "conftest.py", "conftest"))
        for path in files:
            p, f = run_file(session, path)
            passed, failed = passed + p, failed + f
    finally:
        failed += len(session.finish("session"))
        shutil.rmtree(str(base), ignore_errors=True)
    print("{} passed, {} failed".format(passed, failed))
    if failed:
        return 1
    return 0 if passed else 5


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
