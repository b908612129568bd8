"""The package's shape: import layers (checked by import-linter's contracts in pyproject.toml), the store core free
of runtime knowledge, and a public namespace that exports each name exactly once."""
import ast
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import actors

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout, done.stdout


def test_the_compiled_store_core_imports_nothing_from_actors():
    # import-linter reads only .py files: check the Cython sources of _fastser by hand.
    offenders = []
    for path in sorted((ROOT / "_fastser").glob("*.p[yx][xdi]")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import|cimport)\s+actors\b", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def _public_imports():
    tree = ast.parse((ROOT / "actors" / "__init__.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names.append((alias.name, alias.asname))
    return names


def test_each_public_name_is_exported_exactly_once():
    imported = _public_imports()
    exported = [asname for _name, asname in imported]
    assert [n for n in exported if exported.count(n) > 1] == []
    # re-exported as `X as X` (the explicit re-export form type checkers honour), public names only
    assert [(n, a) for n, a in imported if n != a or n.startswith("_")] == []
    # (submodules such as actors.testing are public modules, not names of the namespace; pytest's assertion
    # rewriting, which the package's pytest plugin brings, adds names starting with "@")
    public = sorted(n for n, v in vars(actors).items()
                    if not n.startswith(("_", "@")) and not isinstance(v, types.ModuleType))
    assert public == sorted(exported)
    # and no object is public under two names
    ids = [id(getattr(actors, n)) for n in public]
    assert len(set(ids)) == len(ids)


def test_every_error_is_an_actors_error_defined_in_one_module():
    errors = [getattr(actors, n) for n in vars(actors) if n.endswith("Error")]
    assert errors and all(issubclass(e, actors.ActorsError) for e in errors)
    # _exceptions defines or re-exports every one of them
    from actors import _exceptions
    assert [e.__name__ for e in errors if getattr(_exceptions, e.__name__, None) is not e] == []


@pytest.mark.parametrize("module", ["_codec", "_shm"])
def test_the_typing_stubs_describe_the_compiled_modules(module):
    import importlib
    compiled = importlib.import_module(f"_fastser.{module}")
    stub = ast.parse((ROOT / "_fastser" / f"{module}.pyi").read_text())
    missing = []
    for node in stub.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if not hasattr(compiled, node.name):
                missing.append(node.name)
                continue
            if isinstance(node, ast.ClassDef):
                cls = getattr(compiled, node.name)
                for item in node.body:
                    name = getattr(item, "name", None) or getattr(getattr(item, "target", None), "id", None)
                    if name and not name.startswith("__") and not hasattr(cls, name):
                        missing.append(f"{node.name}.{name}")
        elif isinstance(node, ast.AnnAssign) and not hasattr(compiled, node.target.id):
            missing.append(node.target.id)
    assert missing == []
    # every public function and class of the module is in its stub
    stubbed = {n.name for n in stub.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public = {n for n, v in vars(compiled).items() if not n.startswith("_") and callable(v)
              and getattr(v, "__module__", None) == compiled.__name__}
    assert public - stubbed == set()
