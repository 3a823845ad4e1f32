"""Tenant configs: the projections of several models, declared in a TOML file kept in the
model's repository and checked against a store's schema before any training starts.

    [tenants.retrieval]
    columns = ["item_id", "ts"]
    max_len = 128

    [tenants.engaged]
    columns = ["item_id", "ts"]
    max_len = 1024
    window = "90d"
    where = { column = "action", isin = [1, 3] }
    transforms = { ts = "age_s" }
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from typing import Any

from ._errors import SchemaError
from ._projection import Filter, Projection
from ._schema import Schema

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # whole names only: fullmatch
_FIELDS = {"max_len", "columns", "feature_groups", "window", "where", "transforms"}
_FILTER_FIELDS = {"column", "isin", "any_bits", "all_bits"}


def load_tenants(source: str | os.PathLike, schema: Schema | None = None) -> dict[str, Projection]:
    """The tenants of a TOML config (a path), as name -> Projection, checked against
    ``schema`` (a Schema, or a Store's) when given. Raises SchemaError listing every
    problem, each naming the tenant and the field."""
    problems, tenants, partial = _parse(source)
    if schema is not None:
        problems += check_tenants({**tenants, **partial}, schema)
    if problems:
        raise SchemaError(f"{os.fspath(source)}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return tenants


def check_tenants(tenants: dict[str, Projection] | str | os.PathLike, schema: Schema) -> list[str]:
    """Every way ``tenants`` (name -> Projection, or a TOML config's path) do not fit
    ``schema`` (a Schema, or a Store's), one line each naming the tenant."""
    schema = _schema_of(schema)
    if isinstance(tenants, str | os.PathLike):
        problems, parsed, partial = _parse(tenants)
        return problems + check_tenants({**parsed, **partial}, schema)
    if not isinstance(tenants, dict):
        raise SchemaError(f"tenants must be a dict of name -> lateseq.Projection (or a config's path), "
                          f"got {type(tenants).__name__}")
    problems = []
    for name, projection in tenants.items():
        if not isinstance(projection, Projection):
            problems.append(f"tenant {name!r}: expected a lateseq.Projection, got {type(projection).__name__}")
            continue
        problems += [f"tenant {name!r}: {problem}" for problem in projection.problems(schema)]
    return problems


def _schema_of(schema: object) -> Schema:
    """``schema``, or a Store's (both are what a user has at hand)."""
    schema = getattr(schema, "schema", schema)
    if not isinstance(schema, Schema):
        raise SchemaError(f"expected a lateseq.Schema (or a Store), got {type(schema).__name__}")
    return schema


def name_problem(name: object, folded: dict[str, str]) -> str | None:
    """What makes ``name`` unfit to name a tenant (its output file: no path, no dot file,
    none that case alone tells from another's), or None; ``folded`` collects the names
    seen so far, by their case-folded form."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        return (f"tenant {name!r}: a name is 1 to 128 ASCII letters, digits, '_', '-' and '.', starting with a "
                "letter or digit (it names the tenant's output file, and readers of a folder, lateseq's and "
                "pyarrow's, leave out files whose names start with '_' or '.')")
    twin = folded.setdefault(name.casefold(), name)
    if twin != name:
        return (f"tenant {name!r}: differs from tenant {twin!r} only in case; their output files would be one "
                "file where names ignore case (macOS, Windows)")
    return None


def check_tenant_names(tenants: Mapping[str, object]) -> None:
    """SchemaError unless ``tenants`` names at least one tenant, each by a sound name: the
    same rule for every call that takes them (one that returns batches took ``{}``, ``1``
    and ``""``, which one that writes files refused, s42C)."""
    if not tenants:
        raise SchemaError("no tenants: give at least one name and its Projection")
    folded: dict[str, str] = {}
    problems = [problem for name in tenants if (problem := name_problem(name, folded))]
    if problems:
        raise SchemaError("; ".join(problems))


def _parse(source: str | os.PathLike) -> tuple[list[str], dict[str, Projection], dict[str, Projection]]:
    """(problems, tenants, partial): ``partial`` holds each tenant with a bad field made
    of its other fields, so that the schema check finds their problems in the same run."""
    try:
        # opened without waiting for a writer, then refused unless a file: a FIFO (or a
        # device) read as a config blocked the caller until a writer came, forever if none
        with os.fdopen(os.open(source, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise SchemaError(f"tenant config {os.fspath(source)!r} is not a file (a pipe or a device?): write "
                                  "the config to a file")
            text = file.read()
        # a byte-order mark (Notepad's UTF-8) is no TOML: "Invalid statement at line 1" named nothing
        config = tomllib.loads(text.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except OSError as exc:
        raise SchemaError(f"cannot read tenant config {os.fspath(source)!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{os.fspath(source)}: not valid TOML: {exc}{_quoted_line(text, str(exc))}") from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{os.fspath(source)}: not UTF-8 text, which TOML is (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r})") from None
    unknown = sorted(set(config) - {"tenants"})
    if unknown or not isinstance(config.get("tenants"), dict) or not config["tenants"]:
        value = config.get("tenants")
        found = unknown or ("an array of tables ([[tenants]]), where each tenant is a table named for it"
                            if isinstance(value, list) else "no tenants" if value in (None, {})
                            else f"tenants = {value!r}")
        raise SchemaError(f"{os.fspath(source)}: expected [tenants.NAME] tables and nothing else; found {found}")
    problems: list[str] = []
    tenants: dict[str, Projection] = {}
    partial: dict[str, Projection] = {}
    folded: dict[str, str] = {}
    for name, spec in config["tenants"].items():
        bad_name = name_problem(name, folded)
        if bad_name:  # its fields are checked all the same: every problem in one run
            problems.append(bad_name)
        try:
            (partial if bad_name else tenants)[name] = _projection(spec)
        except SchemaError as exc:
            own, rest = _sound_part(spec)
            dotted = [f'[tenants."{dotted}"]' for dotted in _dotted_names(name, spec)]
            if dotted:  # TOML reads [tenants.a.b] as tenant a's field b
                exc = SchemaError(f"{exc} (a tenant name with a dot is quoted in TOML: {', '.join(dotted)})")
            problems += [f"tenant {name!r}: {problem}" for problem in dict.fromkeys([str(exc), *own])]
            if rest is not None:
                partial[name] = rest
    return problems, tenants, partial


def _quoted_line(text: bytes, message: str) -> str:
    """The line a TOML error names, quoted: "Cannot overwrite a value (at line 3, column
    12)" named neither the tenant nor the field given twice (s52A)."""
    found = re.search(r"at line (\d+), column \d+\)$", message)
    lines = text.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").splitlines()
    if found is None or not 1 <= int(found.group(1)) <= len(lines):
        return ""
    return f": {lines[int(found.group(1)) - 1].strip()[:200]!r}"


def _dotted_names(name: str, spec: Any) -> list[str]:
    """The names a tenant's nested tables spell (TOML reads ``[tenants.a.b.c]`` as tenant
    a's field b holding c), down to the table that holds a tenant's fields."""
    names = []
    for key, value in spec.items() if isinstance(spec, dict) else ():
        if key in _FIELDS or not isinstance(value, dict):
            continue
        dotted = f"{name}.{key}"
        while len(value) == 1 and not set(value) & _FIELDS and isinstance(next(iter(value.values())), dict):
            inner, value = next(iter(value.items()))
            dotted += f".{inner}"
        names.append(dotted)
    return names


def _sound_part(spec: Any) -> tuple[list[str], Projection | None]:
    """(the problem of each field of ``spec`` that is unsound on its own, the projection
    of the others, for the schema check: None when no such projection is made). A field
    is tried with a max_len of 1 unless it is the max_len."""
    if not isinstance(spec, dict):
        return [], None
    own: list[str] = []

    def attempt(fields: dict, problems: list[str] | None = None) -> Projection | None:
        try:
            return _projection({"max_len": 1, **fields})
        except SchemaError as exc:
            if problems is not None:
                problems.append(str(exc))
            return None

    kept = {key: value for key, value in spec.items() if key in _FIELDS and attempt({key: value}, own) is not None}
    if any(key in spec and key not in kept for key in ("columns", "feature_groups")):
        kept.pop("transforms", None)  # they name columns the dropped field may have read
    where = spec.get("where")
    if "where" not in kept and isinstance(where, dict) and isinstance(where.get("column"), str):
        # its column, checked with a stand-in filter: an empty isin hid that the column does not exist (s52A)
        kept["where"] = {"column": where["column"], "isin": [0]}
    return own, attempt(kept)


def _projection(spec: Any) -> Projection:
    if not isinstance(spec, dict):
        raise SchemaError(f"must be a table of fields ({', '.join(sorted(_FIELDS))}), got {spec!r}")
    unknown = sorted(set(spec) - _FIELDS)
    if unknown:
        raise SchemaError(f"unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    if "max_len" not in spec:
        raise SchemaError("field 'max_len' is required (the most recent N events to read)")
    for key in ("columns", "feature_groups"):
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SchemaError(f"field {key!r} must be a list of names, got {value!r}")
        if key in spec and not value:  # read as every column: a list emptied by mistake would read them all
            raise SchemaError(f"field {key!r} names none; leave it out to read every column")
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:  # a typo for another name, likeliest (read once, silently: s43B)
            raise SchemaError(f"field {key!r} names {repeated} more than once")
    where = spec.get("where")
    if where is not None:
        unknown = sorted(set(where) - _FILTER_FIELDS) if isinstance(where, dict) else []
        if not isinstance(where, dict) or "column" not in where or unknown:
            found = f"unknown key(s) {unknown} in {where!r}" if unknown else repr(where)
            raise SchemaError(f"field 'where' must be a table with 'column' and one of isin, any_bits, all_bits; "
                              f"got {found}")
        where = Filter(**where)
    transforms = spec.get("transforms", {})
    if not isinstance(transforms, dict):
        raise SchemaError(f"field 'transforms' must be a table of column = transform, got {transforms!r}")
    return Projection(spec["max_len"], tuple(spec.get("columns", ())), tuple(spec.get("feature_groups", ())),
                      spec.get("window"), where, transforms)
