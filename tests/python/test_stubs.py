"""The type stubs describe the compiled module exactly: every public name, every method and property, and
the same parameter names (keyword arguments are part of the API)."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import luksforge
from luksforge import _luksforge

PACKAGE = Path(luksforge.__file__).parent
STUB = ast.parse((PACKAGE / "_luksforge.pyi").read_text())


def stub_members(node):
    names = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.ClassDef)):
            names[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names[item.target.id] = item
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = item
    return names


STUB_NAMES = stub_members(STUB)
PUBLIC = sorted(n for n in dir(_luksforge) if not n.startswith("_"))
CLASSES = [n for n in PUBLIC if inspect.isclass(getattr(_luksforge, n)) and not issubclass(getattr(_luksforge, n), Exception)]
FUNCTIONS = [n for n in PUBLIC if callable(getattr(_luksforge, n)) and not inspect.isclass(getattr(_luksforge, n))]


def test_package_is_typed():
    assert (PACKAGE / "py.typed").exists() and (PACKAGE / "__init__.pyi").exists()


def test_every_public_name_is_in_the_stub_and_nothing_else():
    public = set(PUBLIC) | {"__version__"}
    stubbed = {n for n in STUB_NAMES if not n.startswith("_") or n == "__version__"}
    assert public - stubbed == set(), "missing from _luksforge.pyi"
    assert stubbed - public == set(), "in _luksforge.pyi but not in the module"


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_member_is_in_the_stub(name):
    cls = getattr(_luksforge, name)
    members = {m for m in vars(cls) if not m.startswith("_")}
    stub = stub_members(STUB_NAMES[name])
    assert members - set(stub) == set(), f"{name}: members missing from the stub"
    assert set(n for n in stub if not n.startswith("_")) - members == set(), f"{name}: stale stub members"


def signature_parameters(doc: str, name: str):
    """Parameter names of pybind11's generated signature line 'name(a: T, *, b: T = x) -> R'."""
    first = doc.strip().splitlines()[0]
    match = re.match(rf"{re.escape(name)}\((.*)\) ->", first)
    assert match, f"no signature in {first!r}"
    params, depth, current = [], 0, ""
    for ch in match.group(1):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        params.append(current.strip())
    return [p.split(":")[0].strip() for p in params]


def stub_parameters(node: ast.FunctionDef):
    args = node.args
    names = [a.arg for a in getattr(args, "posonlyargs", []) + args.args]  # no posonlyargs before 3.8
    if args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    return names


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_parameters_match(name):
    assert signature_parameters(getattr(_luksforge, name).__doc__, name) == stub_parameters(STUB_NAMES[name])


def methods():
    for cls_name in CLASSES:
        cls = getattr(_luksforge, cls_name)
        stub = stub_members(STUB_NAMES[cls_name])
        for member, value in vars(cls).items():
            if member.startswith("_") or isinstance(value, property) or member not in stub:
                continue
            node = stub[member]
            if isinstance(node, ast.FunctionDef) and not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                yield cls_name, member


@pytest.mark.parametrize("cls_name, member", list(methods()))
def test_method_parameters_match(cls_name, member):
    value = getattr(getattr(_luksforge, cls_name), member)
    stub = stub_members(STUB_NAMES[cls_name])[member]
    expected = stub_parameters(stub)
    got = signature_parameters(value.__doc__, member)
    if expected and expected[0] == "self":
        assert got[0] == "self"
    assert got == expected
