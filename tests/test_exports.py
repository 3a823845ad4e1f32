"""The public API is exactly what we mean to export: adding a name is a deliberate act."""

from __future__ import annotations

import types

import lateseq

EXPORTED = {
    "POINTER_BYTES",
    "POINTER_FIELDS",
    "ChecksumMismatch",
    "CommitConflict",
    "JaggedBatch",
    "Filter",
    "LateseqError",
    "NotSynced",
    "PointerError",
    "Pointers",
    "Projection",
    "Schema",
    "SchemaError",
    "Store",
    "StoreError",
    "TransformOverflow",
    "VersionInfo",
    "VersionNotFound",
    "check_tenants",
    "copartition_log",
    "create",
    "iter_batches",
    "load_tenants",
    "log_examples",
    "make_pointers",
    "materialize",
    "materialize_log",
    "materialize_log_tenants",
    "materialize_tenants",
    "open",
}


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


def test_all_is_exactly_the_public_api():
    assert set(lateseq.__all__) == EXPORTED
    assert len(lateseq.__all__) == len(EXPORTED)


def test_all_is_sorted():
    assert lateseq.__all__ == sorted(lateseq.__all__, key=isort_key)


def test_every_export_exists_and_nothing_public_is_left_out():
    for name in lateseq.__all__:
        assert getattr(lateseq, name) is not None
    public = {
        name for name in vars(lateseq)
        if not name.startswith("_") and not isinstance(vars(lateseq)[name], types.ModuleType)
        and name != "annotations"  # from __future__
    }
    assert public == EXPORTED


def test_errors_subclass_the_root_and_the_matching_builtin():
    expected = {
        lateseq.SchemaError: ValueError,
        lateseq.StoreError: OSError,
        lateseq.CommitConflict: lateseq.StoreError,
        lateseq.VersionNotFound: LookupError,
        lateseq.PointerError: ValueError,
        lateseq.ChecksumMismatch: ValueError,
        lateseq.TransformOverflow: lateseq.SchemaError,
    }
    for error, builtin in expected.items():
        assert issubclass(error, lateseq.LateseqError) and issubclass(error, builtin), error
    assert issubclass(lateseq.LateseqError, Exception)


def test_version_string():
    assert isinstance(lateseq.__version__, str) and lateseq.__version__.count(".") == 2


def test_modules_are_private_except_the_documented_subpackages():
    import pkgutil

    public = {m.name for m in pkgutil.iter_modules(lateseq.__path__) if not m.name.startswith("_")}
    assert public == {"audit", "cli", "datasets", "mutable", "ray", "torch", "twotier"}


def test_importing_lateseq_stays_light():
    """The library needs numpy, pyarrow and numba only; the CLI's typer and rich, the
    demo's pandas, torch and ray load only where they are used."""
    import subprocess
    import sys

    code = ("import sys, lateseq, lateseq.twotier, lateseq.audit, lateseq.datasets, lateseq.cli; "
            "print(sorted(m for m in ('typer', 'rich', 'pandas', 'torch', 'click', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readmes_module_list_is_in_the_order_data_flows():
    """README: "data flows one way (top to bottom), nothing imports upward": each module
    imports only modules listed above it, and every module is listed (s62L found three
    imports upward and three modules missing)."""
    import ast
    import re
    from pathlib import Path

    root = Path(lateseq.__file__).parent
    readme = (root.parent.parent / "README.md").read_text()
    block = readme[readme.index("lateseq/\n  __init__.py"):]
    listed = re.findall(r"^  (\w+)\.py ", block[:block.index("```")], re.M)
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem != "__main__")
    assert sorted(listed) == modules
    place = {name: k for k, name in enumerate(listed)}
    for name in listed[1:]:  # (__init__ gathers the public API from below)
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
                     and not node.module for alias in node.names}
        below = sorted(m for m in imported if m in place and place[m] > place[name])
        assert not below, f"{name} imports {below}, listed below it"
