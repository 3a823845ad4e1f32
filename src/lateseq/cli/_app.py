"""The ``lateseq`` command line: a contract other tools script against.

Results go to stdout (a bare version number where one is produced, so scripts can
capture it); progress and information go to stderr. Bad input of any kind exits
non-zero with one line on stderr, ``error: <message>``, never a traceback. An output
file that exists is replaced only with ``--force`` (and never when it is one of the
command's inputs, or inside the store); outputs are written whole or not at all.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import inspect
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from lateseq import (
    ChecksumMismatch,
    CommitConflict,
    LateseqError,
    Projection,
    Schema,
    SchemaError,
    Store,
    StoreError,
    copartition_log,
    load_tenants,
    log_examples,
)
from lateseq._examplelog import ExampleLog
from lateseq._format import holds_store, replaceable, replaced_when_written, usable_path
from lateseq._loader import materialize_log, materialize_log_tenants
from lateseq._parquet import read_checked
from lateseq._pointers import write_log
from lateseq._schema import UNIT_WORDS, as_user_ids, past_year_3000, ticks_per_second
from lateseq._store import check_commit_id, physical_memory
from lateseq._versions import GATE, MANIFEST_NAME, STORE_ID
from lateseq.cli import human_bytes

# errors that mean "bad input"; anything else is a bug (also one line, unless LATESEQ_DEBUG)
_USER_ERRORS = (LateseqError, OSError, pa.ArrowException)


def _fail(message: str, code: int = 1) -> None:
    _settle()
    lines = (" ".join(line.split()) for line in str(message).splitlines())  # a list of problems keeps its lines
    print("error: " + "\n  ".join(line for line in lines if line), file=sys.stderr)
    sys.exit(code)


_PACKAGE = Path(__file__).resolve().parents[1]  # lateseq's source folder


def _show_warning(show: Callable[..., None], message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """lateseq's warnings as the CLI's other lines ("warning: ..."): Python's form showed a
    source path and a line of the CLI's code (s36E). Other libraries' go to ``show``."""
    if not Path(filename).resolve().is_relative_to(_PACKAGE):  # (a prefix: lateseq_plugins/ too, s36R)
        show(message, category, filename, lineno, file, line)
        return
    lines = (" ".join(part.split()) for part in str(message).splitlines())
    print("warning: " + "\n  ".join(part for part in lines if part), file=sys.stderr if file is None else file)


def _from_worker(message: str) -> str:
    """A DataLoader worker's error as its own message: torch raises it again in the parent
    with the worker's traceback for its text ("Caught X in DataLoader worker process 0.
    Original Traceback ... X: message")."""
    lines = message.splitlines()
    caught = re.fullmatch(r"Caught (\w+) in DataLoader worker process \d+\.", lines[0]) if lines else None
    if caught is None:
        return message
    raised = re.compile(rf"(?:[\w.]+\.)?{caught.group(1)}: ")  # the traceback's last line, the error's own
    last = max((i for i, line in enumerate(lines) if i > 1 and raised.match(line)), default=None)
    return message if last is None else raised.sub("", "\n".join(lines[last:]), count=1)


class _Terminated(BaseException):
    """SIGTERM (what Airflow, Kubernetes and ``timeout`` send), raised where the command
    was, as SIGINT raises KeyboardInterrupt: what it was writing is removed on the way out
    (by default SIGTERM ended the process at once, leaving a partial temporary output)."""


_SIGNALS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}
_received: list[int] = []  # the signals that reached this command
_deferred = False  # while the handlers go in, and once the outcome is decided: a signal is recorded, not raised
_owns_process = False  # set by ``run``: the command is the whole process (not CliRunner, not app() in a program)
_inherited_ignored: set[int] = set()  # ignored by the parent (nohup, a script's background job): left ignored


def run() -> None:
    """The command line as a process of its own (the ``lateseq`` script): the handlers go in
    at once (typer builds the command before it runs it), recording a signal until the
    command's handling began."""
    global _owns_process, _deferred
    _owns_process = _deferred = True
    _inherited_ignored.update(signum for signum in _SIGNALS if signal.getsignal(signum) == signal.SIG_IGN)
    for signum in _listened():
        signal.signal(signum, _on_signal)
    sys.unraisablehook = _unraisable
    app()


def _listened() -> list[int]:
    """The signals this command answers: not one ignored where it began (the convention for
    nohup and a script's background jobs; a SIGINT ignored until the handlers went in, then
    obeyed, ended an ingest or not by a tenth of a second)."""
    if _owns_process:
        return [signum for signum in _SIGNALS if signum not in _inherited_ignored]
    return [signum for signum in _SIGNALS if signal.getsignal(signum) != signal.SIG_IGN]


def _unraisable(unraisable: Any) -> None:
    """A signal raised where Python cannot pass it on (a finalizer, a weakref callback) is
    recorded already, and said at the end; so is a finalizer's error once a signal came, its
    consequence (llvmlite's half-made pass builder, a compile cut short: "Exception ignored"
    before the one `error:` line, in a clean clone's CI). Anything else as Python reports it."""
    if not _received and not isinstance(unraisable.exc_value, KeyboardInterrupt | _Terminated):
        sys.__unraisablehook__(unraisable)


def _on_signal(signum: int, frame: Any) -> None:
    _received.append(signum)
    if len(_received) == 1 and not _deferred:  # a second one would cut short the first's way out
        _raise_received()


def _raise_received() -> None:
    raise KeyboardInterrupt if _received[0] == signal.SIGINT else _Terminated



@contextlib.contextmanager
def _handled_signals() -> Iterator[bool]:
    """SIGINT and SIGTERM raised where the command is while it runs (the first of them);
    after, ignored by a process that is only exiting now (one that arrived then turned a
    command already done into a failure, and a retry of an ingest committed it twice),
    else as they were. Gives whether they are handled here (only in the main thread);
    one that arrives before the command's handling began is raised there (``_begin``)."""
    global _deferred
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    if not _owns_process:  # (a process of its own records from its start: ``run``)
        _received.clear()
    _deferred = True
    previous = {signum: signal.signal(signum, _on_signal) for signum in _listened()}
    try:
        # pyarrow imports pandas (where installed) on its first array and swallows what
        # interrupts that import (a signal raised there was lost and the command ran on):
        # made to happen now, while a signal is only recorded
        pa.array([])
        yield True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if _owns_process else handler)
        _deferred = False
        if not _owns_process:  # a program's next command, from any thread, starts with none
            _received.clear()


def _settle() -> None:
    """The outcome is decided: a signal from now on is recorded only (raised while the
    process reports or exits, it turned a finished command into a traceback)."""
    global _deferred
    _deferred = True


def _begin() -> None:
    """The command's handling has begun: a signal recorded meanwhile is raised now."""
    global _deferred
    _deferred = False
    if _received:
        _raise_received()


@functools.cache  # once a process: commands run in one (tests, notebooks) said it at each
def _say_compiling() -> None:
    """On a terminal, says when numba first compiles a kernel of lateseq's in this process:
    a first use on a machine compiles them (10-50 s in strangers' runs, silent until then),
    later runs load them from numba's cache."""
    if not sys.stderr.isatty():
        return
    from numba.core import event

    class FirstCompile(event.Listener):
        said = False

        def on_start(self, ev: event.Event) -> None:
            dispatcher = (ev.data or {}).get("dispatcher")
            module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
            if not self.said and module.startswith("lateseq."):
                self.said = True
                _err.print("compiling lateseq's kernels for this machine (10-60 s; numba keeps them for the next "
                           "runs where its cache can be written)", highlight=False)

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", FirstCompile())


def _signalled() -> None:
    """Exits as the first signal received says, if any was: an error that followed one
    (a library's import cut short by it) is its consequence, not a bug to report. A process
    of its own exits at once: what was being written is already removed, and objects a
    compiler left half made would print "Exception ignored" lines as Python tore them down."""
    if not _received:
        return
    message, code = _SIGNALS[_received[0]]
    print(f"error: {message}", file=sys.stderr)
    if not _owns_process:
        raise SystemExit(code)
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_usage_error(exc: BaseException) -> bool:
    """Click's usage errors (click is vendored by newer typer, so matched by shape)."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(exc, "exit_code")


def _usage_message(exc: Any) -> str:
    """Click's message for a usage error; a bad value of an option that an environment
    variable can also set names the option alone where it was typed (``--readahead yes``
    blamed LATESEQ_READAHEAD too, as if the variable were set)."""
    param, ctx = getattr(exc, "param", None), getattr(exc, "ctx", None)
    if getattr(param, "envvar", None) and ctx is not None and getattr(exc, "param_hint", "") is None:
        source = ctx.get_parameter_source(param.name)  # type: ignore[union-attr]
        if source is not None and source.name == "COMMANDLINE":
            exc.param_hint = " / ".join(f"'{name}'" for name in param.opts)  # type: ignore[union-attr]
    return exc.format_message().replace(": Value error, ", ": ", 1)  # typer's wrapping of a choice's ValueError


class _Group(TyperGroup):
    """Reports every user error, usage errors included, as one ``error:`` line."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _paths_refuse_empty(_valueless_flags(super().get_params(ctx)))

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        with _handled_signals() as handled:
            try:
                code = self._reported(handled, args, prog_name, complete_var, **extra)
            except (KeyboardInterrupt, _Terminated):  # one that arrived while a failure was reported
                _signalled()
                raise
        sys.exit(code if isinstance(code, int) else 0)

    def _reported(self, handled: bool, args: Sequence[str] | None, prog_name: str | None,
                  complete_var: str | None, **extra: Any) -> Any:
        """The command's exit code; any failure reported as one line (and exited)."""
        try:
            if handled:
                _begin()
                _say_compiling()
            with warnings.catch_warnings():
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
                code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            _signalled()
            _fail("aborted", 1)
        except (KeyboardInterrupt, _Terminated):
            _signalled()
            _fail("interrupted", 130)
        except ChecksumMismatch as exc:  # its hint names the Python API's option
            _fail(f"{_from_worker(exc.problem)} `lateseq audit STORE EXAMPLES` reports each row and its cause.")
        except MemoryError:  # no bug to report: an input too big for this machine (s62T: "internal error");
            _signalled()  # before the user errors: pyarrow's own is an ArrowException too ("malloc of size ...")
            _fail("out of memory: the command needs more than this machine gives it (ingest and pointers read a "
                  "file whole, ingest at 100-140 bytes an event: split a big input into several runs)")
        except _USER_ERRORS as exc:
            _signalled()
            _fail(_from_worker(str(exc)) or type(exc).__name__)
        except Exception as exc:
            _signalled()
            if _is_usage_error(exc):
                if type(exc).__name__ == "NoArgsIsHelpError":
                    ctx = getattr(exc, "ctx", None)
                    print(ctx.get_help() if ctx is not None else "", file=sys.stderr)
                    sys.exit(exc.exit_code)  # type: ignore[attr-defined]
                _fail(_usage_message(exc), exc.exit_code)  # type: ignore[attr-defined]
            if isinstance(exc, ImportError) and "pip install 'lateseq[" in str(exc):
                _fail(str(exc))  # a missing extra, named with the line that installs it: no bug
            if os.environ.get("LATESEQ_DEBUG"):  # a bug: still one line, the traceback on request
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with LATESEQ_DEBUG=1 "
                  "for a traceback, and please report it)")
        if code == 130:  # typer's answer to KeyboardInterrupt, whatever the command was doing
            _signalled()
        _settle()
        if _received:  # raised where something swallowed it: the command finished all the same
            print(f"warning: {signal.Signals(_received[0]).name} arrived and was lost inside a library; the "
                  "command ran to its end", file=sys.stderr)
        return code


class _Command(TyperCommand):
    """A command whose help reads as written: paragraphs rewrapped to the terminal, flags
    shown as taking no value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _paragraphs(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _paths_refuse_empty(_valueless_flags(super().get_params(ctx)))


def _paragraphs(text: str | None) -> str | None:
    """``text`` with each paragraph on one line, for the help to wrap: typer's rich help
    keeps a docstring's line breaks after its first paragraph, and the terminal's wrapping
    then broke each line again ("(it" / "was" / "killed, ..."). A paragraph that starts with
    ``\\b`` keeps its lines, as in click."""
    if text is None:
        return None
    return "\n\n".join(part if part.startswith("\b") else " ".join(part.split())
                       for part in inspect.cleandoc(text).split("\n\n"))


def _valueless_flags(params: list[Any]) -> list[Any]:
    """``params`` with each flag's value label left empty: typer 0.29 (its own copy of click)
    labels every flag, --help included, ``<bool>``, as if it took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def _paths_refuse_empty(params: list[Any]) -> list[Any]:
    """``params`` with each path refusing an empty value: ``Path("")`` is the current
    folder, and an unset variable's "" made it a store, or put a read cache in it."""
    for param in params:
        path = getattr(getattr(param, "type_descriptor", None), "annotation", None) is Path
        if path and not isinstance(param.process_value, functools.partial):  # wrapped once
            param.process_value = functools.partial(_non_empty_path, param, param.process_value)
    return params


def _non_empty_path(param: Any, process: Callable[[Any, Any], Any], ctx: Any, value: Any) -> Any:
    if isinstance(value, str) and not value:
        raise typer.BadParameter("is empty; name a file or folder ('.' for the current one)", ctx=ctx, param=param)
    return process(ctx, value)


class _Typer(typer.Typer):
    """A typer app whose commands are ``_Command``s."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    cls=_Group,
    name="lateseq",
    help="Versioned late materialization of user histories for sequential recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True, soft_wrap=True)
_read_cache: dict = {"dir": None, "merged": "auto", "readahead": "auto"}  # set by the global options


class Setting(str, Enum):
    """The choices of ``--merged-reads`` and ``--readahead`` (a ``Store`` setting's "auto", True, False)."""

    auto = "auto"
    always = "always"
    never = "never"


_SETTING = {Setting.auto: "auto", Setting.always: True, Setting.never: False}


def _setting_option(flag: str, text: str) -> Any:
    """A global ``Setting`` option, also read from LATESEQ_<FLAG> (``--merged-reads``: LATESEQ_MERGED_READS)."""
    return typer.Option(flag, envvar=f"LATESEQ_{flag[2:].upper().replace('-', '_')}", case_sensitive=False, help=text)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"lateseq {version('lateseq')}")
        raise typer.Exit()


@app.callback()
def _global_options(
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="LATESEQ_CACHE_DIR", show_default="STORE/cache",
        help="Where decoded segments are kept for reading, in a folder of the store's own (e.g. local disk "
             "when STORE is shared or read-only; one such directory serves many stores).",
    )] = None,
    merged_reads: Annotated[Setting, _setting_option(
        "--merged-reads", "Read a version of many segments through merged copies built in the read cache (a "
        "local compaction, once per version and host): always, never, or auto (once the reads of a partition "
        "have cost about what its copy does; until then, its older segments through an earlier version's copy "
        "on this host).")] = Setting.auto,
    readahead: Annotated[Setting, _setting_option(
        "--readahead", "Let the kernel read ahead of the store pages a read needs: always, never (for random "
        "reads of a store bigger than memory), or auto (never when the version would take more than half of "
        "this machine's memory).")] = Setting.auto,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print lateseq's version and exit.")] = False,
) -> None:
    _read_cache["dir"] = cache_dir
    _read_cache["merged"] = _SETTING[merged_reads]
    _read_cache["readahead"] = _SETTING[readahead]


def _out() -> Console:
    """Stdout; not wrapped at 80 columns when piped, so tables stay one line per row."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print_table(table: Table) -> None:
    """A table on stdout; piped, its title stays one line (a table narrower than its title
    wrapped it, a long store path split over lines that a log search then missed)."""
    out = _out()
    if not out.is_terminal and table.title:
        table.min_width = len(str(table.title))
    out.print(table)


# ---------------------------------------------------------------- helpers


def _input_file(path: Path, what: str) -> Path:
    usable_path(path)  # a URL is named as one, not as a missing file (s49C)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} path {path} is not a file")
    return path


def _not_a_store(path: Path, what: str) -> None:
    """Refuses a store given where a file (or a folder of part files) is expected: read as
    Parquet, it was blamed for a file deep in its read cache."""
    if holds_store(path):
        article = "an" if what[0] in "aeio" else "a"  # (a users file)
        raise IsADirectoryError(f"{path} is a lateseq store (it has schema.json), not {article} {what}")


def _check_arguments(store: Path, path: Path, what: str) -> None:
    """STORE and the input that follows it, before either is read: given in each other's
    place (or the store twice), each was blamed for what it holds."""
    usable_path(store)  # a name too long was a bare "[Errno 36]" (s61C)
    if store.exists() and not store.is_dir():
        swapped = f"; {path} is a store: STORE comes first" if holds_store(path) else ""
        raise StoreError(f"STORE {store} is a file, not a store directory{swapped}")
    _not_a_store(path, what)


def _read_parquet(path: Path, what: str, ids: list[str] | None = None) -> pa.Table:
    """A Parquet file, or a folder of them (Spark's output, hive partitions too); ``ids``:
    the store's id columns (``Schema.id_columns``), which a folder key may name."""
    _not_a_store(path, f"{what} file")
    if not path.is_dir():
        _input_file(path, what)
    return read_checked(path, f"{what} file", ids or [])


def _with_pandas_index(table: pa.Table) -> pa.Table:
    """``table`` as pandas reads it back, less row labels: the unnamed index pandas writes
    beside the data (a filtered frame's ``to_parquet`` keeps it as ``__index_level_0__``)
    is left out, and a named index pandas kept in its metadata only (a RangeIndex, as
    ``set_index("user_id")`` makes of ids 1..N) becomes the column it names."""
    listed = (table.schema.pandas_metadata or {}).get("index_columns", [])
    for index in listed:
        if isinstance(index, dict) and index.get("kind") == "range" and index.get("name") is not None:
            name = str(index["name"])  # (pandas allows any hashable name; a column's is a string)
            values = np.arange(index["start"], index["stop"], index["step"], dtype=np.int64)
            if name in table.column_names or len(values) != table.num_rows:  # a folder's files: one file's range
                raise SchemaError(f"the pandas index {name!r} is kept in the file's metadata only, and cannot be "
                                  "read back here; write it as a column (DataFrame.reset_index())")
            table = table.append_column(name, pa.array(values))
    return table.drop_columns([name for name in listed if isinstance(name, str) and name in table.column_names
                               and re.fullmatch(r"__index_level_\d+__", name)])


def _open(store: Path, version: str | None = None) -> Store:
    return Store(store, version, cache_dir=_read_cache["dir"], merged_reads=_read_cache["merged"],
                 readahead=_read_cache["readahead"])


def _columns(option: str | None, name: str = "--columns") -> tuple[str, ...]:
    if option is None:
        return ()
    names = tuple(c.strip() for c in option.split(",") if c.strip())
    if not names:
        raise SchemaError(f"{name} {option!r} names no columns")
    return names


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=_err, transient=True, disable=not _err.is_terminal)


StoreArg = Annotated[Path, typer.Argument(help="Store directory.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.")]


def _counted(count: int, one: str, many: str | None = None) -> str:
    """``count`` things, in words that agree with it ("1 version", "2 versions")."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def _check_output(out: Path, force: bool, option: str, inputs: Sequence[Path] = (),
                  store: Path | None = None, folder_made_later: bool = False) -> None:
    """Refuses, before any work, an output that exists (unless ``force``), that is one of
    the command's ``inputs`` or inside ``store`` (even with ``force``: a failed or wrong
    run would destroy what it reads), or whose directory does not exist (nor its parent,
    when the command makes it: ``folder_made_later``)."""
    usable_path(out)  # a URL is named as one, not as a missing folder (s49C)
    if store is not None:
        _outside_store(out, option, store)
    if out.exists() and any(p.exists() and os.path.samefile(out, p) for p in inputs):
        raise FileExistsError(f"{option} {out} is also this command's input; write to another path "
                              "(--force never overwrites an input)")
    holding = next((p for p in inputs if p.is_dir() and out.resolve().is_relative_to(p.resolve())), None)
    if holding is not None:
        raise FileExistsError(f"{option} {out} is inside {holding}, a folder this command reads (its next run "
                              "would read the output as an input); write it elsewhere")
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out} is a directory")
    replaceable(out)
    if out.exists() and not force:
        raise FileExistsError(f"{option} {out} exists; pass --force to overwrite it")
    folder = out.parent.parent if folder_made_later and not out.parent.exists() else out.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {out}: directory {folder} does not exist")


def _outside_store(out: Path, option: str, store: Path) -> None:
    if out.resolve().is_relative_to(store.resolve()):
        raise FileExistsError(f"{option} {out} is inside the store {store}; write it elsewhere")


class TimeUnit(str, Enum):
    """``--time-unit``'s choices: Arrow's timestamp units (``Schema.time_unit``)."""

    s = "s"
    ms = "ms"
    us = "us"
    ns = "ns"


def _integer_times(table: pa.Table, columns: list[str], unit: str | None, schema: Schema, source: Path) -> pa.Table:
    """``table`` with the integers of its time ``columns`` read as ``unit`` (the store then
    converts them exactly to its own). A store that counts a unit refuses integer times whose
    unit is not given: a file of epoch milliseconds taken as the store's microseconds would
    put every event in January 1970, and every request there found nothing."""
    present = [c for c in columns if c in table.column_names]  # a missing one: the schema's check names it
    integers = [c for c in present if pa.types.is_integer(table.column(c).type)]
    if schema.time_unit is None:
        if unit is not None:
            raise SchemaError(f"--time-unit {unit}: this store's times are plain integers (it counts no unit); "
                              "leave --time-unit out")
        return table
    if not integers:
        if unit is not None and columns[0] not in table.column_names:
            raise SchemaError(f"{source} has no time column {columns[0]!r} (it has {table.column_names})")
        if unit is not None:
            kinds = ", ".join(f"{c!r} holds {table.column(c).type}" for c in present)
            if all(pa.types.is_timestamp(table.column(c).type) or pa.types.is_date(table.column(c).type)
                   for c in present):
                if unit == schema.time_unit:  # the run that created the store, as a daily job repeats it
                    return table
                raise SchemaError(f"--time-unit says what integer times count, and {source} has none ({kinds}, "
                                  f"which brings its own unit; this store counts {schema.time_unit}): leave "
                                  "--time-unit out")
            raise SchemaError(f"--time-unit says what integer times count, and {source} has none ({kinds}): times "
                              "must be integers, timestamps or dates; cast them to int64 first where they hold "
                              "whole numbers")
        return table
    if unit is None:
        raise SchemaError(f"{source}'s {' and '.join(map(repr, integers))} hold plain integers and this store counts "
                          f"{schema.time_unit}: say what they count with --time-unit s|ms|us|ns (converted exactly "
                          f"to {schema.time_unit}; --time-unit {schema.time_unit} takes them as they are)")
    for column in integers:
        try:
            times = table.column(column).cast(pa.int64())
        except pa.ArrowInvalid as exc:
            raise SchemaError(f"{source}'s column {column!r} holds integers that do not fit int64: {exc}") from exc
        newest = pc.max(times).as_py()
        if newest is not None and past_year_3000(newest, unit):  # the store's check would see a timestamp (s47A)
            raise SchemaError(f"{source}'s integer {column!r} read as --time-unit {unit}: {newest} is after the "
                              f"year 3000 in {UNIT_WORDS[unit]}; check what the integers count (a finer unit?)")
        finer = ticks_per_second(unit) // ticks_per_second(schema.time_unit)
        if finer > 1:  # said here, about the integers and the option: the store would name a timestamp type
            values = times.drop_null().to_numpy()  # a null: the schema names it
            lossy = int(np.count_nonzero(values % finer))
            if lossy:
                raise SchemaError(f"{source}'s integer {column!r} read as --time-unit {unit}: {lossy:,} of "
                                  f"{len(values):,} values are not whole {UNIT_WORDS[schema.time_unit]}, which this "
                                  "store counts; check what the integers count")
        table = table.set_column(table.column_names.index(column), column, times.cast(pa.timestamp(unit)))
    return table


# ---------------------------------------------------------------- commands


@app.command()
def ingest(
    store: StoreArg,
    events: Annotated[Path, typer.Argument(help="Parquet file of events, or a folder of them (Spark's output, hive "
                                             "partitions too).", show_default=False)],
    user_col: Annotated[str | None, typer.Option(help="User column.", show_default="user_id")] = None,
    time_col: Annotated[str | None, typer.Option(help="Event time column.", show_default="ts")] = None,
    tiebreak: Annotated[str | None, typer.Option(help="Integer column ordering events that share a time.")] = None,
    partitions: Annotated[int | None, typer.Option(help="User-hash partitions.", show_default="1")] = None,
    event_id_col: Annotated[str | None, typer.Option(
        help="int64 column of event ids: a new store keeps one copy of events sharing (user, event id), so a "
             "redelivered or duplicated event is stored once.", show_default="none: every row is an event")] = None,
    time_unit: Annotated[TimeUnit | None, typer.Option(
        help="What the file's integer times count: a new store's unit, converted exactly to an existing "
             "store's (needed there for integer times; a timestamp time column brings its own unit).",
        show_default="the time column's timestamp unit, else none: plain integers")] = None,
    commit_id: Annotated[str | None, typer.Option(
        help="Names this ingest: rerunning it with the same id (and file) commits nothing and prints "
             "the version that holds it. Without --commit-id, a rerun commits the events again.")] = None,
    allow_empty: Annotated[bool, typer.Option(
        "--allow-empty", help="An input without events commits nothing and prints the latest version (a "
                              "scheduled export of a quiet hour), instead of failing.")] = False,
    drop: Annotated[str | None, typer.Option(
        help="Comma-separated columns of the input to leave out: a hive folder's key (dt=2024-01-01/ reads as "
             "a string column), or any column the store does not keep.", show_default=False)] = None,
) -> None:
    """Commit EVENTS as a new version (creating the store on first use); print its number.

    Each run commits what it reads: a retry of a run that may have committed (it was
    killed, or its output lost) commits the events again, unless both runs pass the same
    --commit-id (or the store names an event id column, --event-id-col, which drops repeats);
    a warning says so where one of the 8 versions before committed the same events in the same order.
    The file is read and committed whole, at 100-140 bytes of memory an event: split a
    bigger input into several ingests (each a version), and give a store past some tens
    of millions of events --partitions."""
    _check_arguments(store, events, "events file")
    for option, name in (("--user-col", user_col), ("--time-col", time_col)):
        if name is not None and not name.strip():  # "" was taken for the default (s61C)
            raise SchemaError(f"{option} {name!r} names no column")
    ids = (_open(store).schema.id_columns if holds_store(store)
           else [user_col or "user_id", *([event_id_col] if event_id_col else [])])
    table = _with_pandas_index(_read_parquet(events, "events", ids))
    if drop is not None:  # (s50A: a Spark folder partitioned by a string date could not be ingested as it was)
        dropped = _columns(drop, "--drop")
        unknown = [name for name in dropped if name not in table.column_names]
        if unknown:
            raise SchemaError(f"--drop names columns {events} does not have: {unknown} (it has {table.column_names})")
        table = table.drop_columns(list(dropped))
    if table.num_rows == 0 and not allow_empty:
        raise SchemaError(f"no events to commit: {events} holds none (--allow-empty makes that a success that "
                          "commits nothing)")
    unit = None if time_unit is None else time_unit.value
    if holds_store(store):
        handle = _open(store)
        schema = handle.schema
        given = {"--user-col": (user_col, schema.user_col), "--time-col": (time_col, schema.time_col),
                 "--tiebreak": (tiebreak, schema.tiebreak), "--partitions": (partitions, schema.partitions),
                 "--event-id-col": (event_id_col, schema.event_id_col)}
        for option, (value, existing) in given.items():
            if value is not None and value != existing:
                raise SchemaError(f"{option} {value} disagrees with the store's schema ({existing}); "
                                  "a store's schema is fixed when it is created")
        if table.num_rows or unit is not None:  # no rows: no integers to say the unit of (--allow-empty)
            table = _integer_times(table, [schema.time_col, schema.arrival_col], unit, schema, events)
        created = ""
    else:
        if store.is_dir() and any(store.iterdir()):
            raise StoreError(f"{store} exists and is not a lateseq store (no schema.json); "
                             "pick a new or empty directory")
        if not table.num_columns:  # a quiet hour's folder of no part file: nothing to take a schema from
            raise SchemaError(f"{events} holds no columns (a folder of no data file?), and a new store takes its "
                              "schema from its first input: create the store from an input with its columns (an "
                              "empty file of them will do with --allow-empty)")
        options: dict[str, Any] = {"time_unit": unit} if unit is not None else {}
        schema = Schema.infer(table, user_col or "user_id", time_col or "ts", tiebreak=tiebreak,
                              partitions=1 if partitions is None else partitions, event_id_col=event_id_col,
                              **options)
        if unit is not None and table.num_rows:  # integers of a finer unit named with the file, as for a store
            table = _integer_times(table, [schema.time_col, schema.arrival_col], unit, schema, events)
        if table.num_rows or not allow_empty:
            schema.conform(table)  # check everything before creating anything
        check_commit_id(commit_id)
        Store.create(store, schema)
        # its unit, said: integer request times must count it (a file's timestamps in us made a store in us, s50A)
        origin = "" if unit is not None else ", from the events file's time column"
        # and its columns: a hive folder's integer keys (dt=20261101/hour=13/) became columns silently (s51A)
        columns = ", ".join(f"{name} {dtype}" for name, dtype in schema.columns.items()) or "none"
        created = ("created store (times are plain integers of no unit" if schema.time_unit is None else
                   f"created store (times in {schema.time_unit}{origin}") + f"; columns: {columns})"
        try:
            _commit(_open(store), table, events, commit_id, allow_empty, created)
        except BaseException:
            _remove_unused(store)
            raise
        return
    _commit(handle, table, events, commit_id, allow_empty, created)


COMMIT_TRIES = 8  # another writer published first this often in a row: a store that busy needs one writer


def _retried(write: Callable[[], Store]) -> Store:
    """``write()``, made again where another writer published first: ingests run side by
    side (an hour's files each), a privacy request among them; each lands in turn."""
    for attempt in range(COMMIT_TRIES - 1):
        try:
            return write()
        except CommitConflict:
            time.sleep(random.uniform(0.5, 1.0) * 0.05 * 2**attempt)  # apart, lest they meet again
    return write()  # the last try: its conflict is the error


def _commit(handle: Store, table: pa.Table, events: Path, commit_id: str | None, allow_empty: bool,
            created: str) -> None:
    latest = handle.latest_version
    if table.num_rows == 0 and allow_empty:
        if table.num_columns:  # none: a quiet hour's folder of no part file, only _SUCCESS
            handle.schema.check_columns(table)  # every column, as a busy hour's export has
            handle.schema.conform(table, empty=True)
        print(latest)
        _err.print(f"{created + '; ' if created else ''}{events} holds no events: nothing committed, the latest "
                   f"version is {latest}", highlight=False)
        return
    def commit() -> Store:
        nonlocal latest
        latest = handle.latest_version  # a twin run with the same id may have published it meanwhile
        return handle.commit(table, commit_id=commit_id)

    new = _retried(commit)
    print(new.version)
    if new.version <= latest:
        _err.print(f"{events} was committed before under id {commit_id!r}: nothing to do", highlight=False)
        return
    repeated = 0
    if new.schema.event_id_col is not None:  # events of an id stored before, or earlier in the file: kept once
        with contextlib.suppress(LateseqError):  # (the version before, retired meanwhile: no count)
            repeated = table.num_rows - (new.num_events - new.checkout(new.version - 1).num_events)
    what = (f"{table.num_rows - repeated:,} of the {table.num_rows:,} events in {events} ({repeated:,} repeated an "
            f"event id)" if repeated else f"{table.num_rows:,} events from {events}")
    _err.print(f"{created + ', ' if created else ''}committed {what} as version {new.version} "
               f"({new.num_events:,} events in all)", highlight=False)
    if commit_id is None and new.schema.event_id_col is None and (  # (with one, a rerun stores no copy: s61H)
            twin := new._log.same_events(new.version, _user_ids(table, new.schema))) is not None:  # a rerun (s51A)
        _err.print(f"warning: version {twin} committed the same events in the same order: they are now stored "
                   f"twice (histories read at version {new.version} hold each of them twice). Rerun an ingest that "
                   "may have committed with the first run's --commit-id, which then commits nothing (or give a new "
                   "store --event-id-col, which keeps one copy of an event)", highlight=False)


def _user_ids(table: pa.Table, schema: Schema) -> np.ndarray:
    """The ids of the users ``table``'s events (committed: their ids are sound) are of."""
    return pc.unique(table.column(schema.user_col)).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _remove_unused(store: Path) -> None:
    """Removes a store this run created whose first commit failed (interrupted, a full
    disk): left, it held the schema inferred from this input, and a corrected rerun (other
    options) was refused as disagreeing with it. Kept where a version or a tag was
    published (or a folder is not lateseq's); the commit's other leftovers (its commit
    id's record, unpublished segment files, temporaries) kept it too, and so the schema
    (s45D)."""
    try:
        leftovers = [path for sub in ("versions", "segments") for path in (store / sub).iterdir()]
        if any(MANIFEST_NAME.fullmatch(p.name) or p.is_dir() for p in leftovers) or any((store / "tags").iterdir()):
            return
    except OSError:
        return
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink()
    for name in ("schema.json", STORE_ID, ".lock", GATE):
        with contextlib.suppress(OSError):
            (store / name).unlink(missing_ok=True)
    shutil.rmtree(store / "cache", ignore_errors=True)
    for sub in ("versions", "segments", "tags", ""):
        with contextlib.suppress(OSError):
            (store / sub).rmdir()


@app.command()
def versions(
    store: StoreArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version, for scripts.")] = False,
    last: Annotated[int | None, typer.Option(help="Only the newest LAST versions (reads only theirs).",
                                             show_default="all")] = None,
    tagged: Annotated[bool, typer.Option("--tagged", help="Only the tagged versions.")] = False,
) -> None:
    """List the store's kept versions, oldest first."""
    infos = _open(store).versions(last, tagged)
    if as_json:
        for v in infos:
            print(json.dumps({"version": v.version, "created_at": v.created_at, "operation": v.operation,
                              "events": v.events, "segments": v.segments, "bytes": v.bytes,
                              "tags": list(v.tags), "watermark": v.watermark}))
        return
    table = Table(title=f"versions of {store}")
    folded = any(v.watermark is not None for v in infos)  # a two-tier store's: what each version holds
    for name, justify in [("version", "right"), ("created", "left"), ("operation", "left"),
                          ("events", "right"), ("segments", "right"), ("bytes", "right"), ("tags", "left"),
                          *([("watermark", "right")] if folded else [])]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for v in infos:
        created = _dt.datetime.fromtimestamp(v.created_at).isoformat(sep=" ", timespec="seconds")
        table.add_row(str(v.version), created, v.operation, f"{v.events:,}", str(v.segments),
                      f"{v.bytes:,}", ", ".join(v.tags),
                      *([] if not folded else ["" if v.watermark is None else str(v.watermark)]))
    _print_table(table)


class Policy(str, Enum):
    """``compact --policy``'s choices (``Store.compact``'s): listed in its help, where ``<str>`` named none."""

    full = "full"
    tiered = "tiered"


@app.command()
def compact(
    store: StoreArg,
    policy: Annotated[Policy, typer.Option(
        help="full: one segment per partition; tiered: merge runs of FANOUT adjacent segments of one size "
             "tier (bounded rewriting for daily commits).")] = Policy.full,
    fanout: Annotated[int | None, typer.Option(help="Segments a tiered merge joins (--policy tiered).",
                                               show_default="4")] = None,
) -> None:
    """Merge segments (all of a partition's, or size tier by size tier), as a new version; print its number."""
    if fanout is not None and policy is Policy.full:  # it was ignored without a word (s61C)
        raise SchemaError("--fanout is for --policy tiered; a full compaction merges all of a partition's segments")
    handle = _open(store)
    new = handle.compact(policy.value, fanout=4 if fanout is None else fanout)
    print(new.version)
    if new.version == handle.version:
        _err.print(f"nothing to compact under the {policy.value} policy", highlight=False)
        return
    _err.print(f"{len(handle.segment_infos)} segments -> {len(new.segment_infos)}; wrote "
               f"{sum(i.bytes for i in new.segment_infos if i not in handle.segment_infos):,} bytes",
               highlight=False)


@app.command(context_settings={"ignore_unknown_options": True})  # ``tag STORE -1 x``: -1 is a version, not an option
def tag(
    store: StoreArg,
    version: Annotated[str, typer.Argument(help="Version number (or a tag).", show_default=False)],
    name: Annotated[str, typer.Argument(help="Tag name.", show_default=False)],
) -> None:
    """Name VERSION as NAME (moving NAME if it exists); a tagged version is pinned."""
    handle = _open(store)
    before = handle.tags().get(name)
    handle.tag(name, version)
    now = handle.tags()[name]
    moved = (f" (moved from version {before}, which it no longer pins)" if before is not None and before != now
             else "")
    _err.print(f"tagged version {now} as {name!r}{moved}", highlight=False)


@app.command()
def untag(store: StoreArg, name: Annotated[str, typer.Argument(help="Tag name.", show_default=False)]) -> None:
    """Remove the tag NAME."""
    _open(store).untag(name)
    _err.print(f"removed tag {name!r}", highlight=False)


@app.command()
def cleanup(
    store: StoreArg,
    before: Annotated[str | None, typer.Option(help="Retire versions older than this one: a number, a tag or "
                                                    "'latest'.", show_default="latest")] = None,
    keep_tags: Annotated[bool, typer.Option(
        "--keep-tags/--no-keep-tags",
        help="Keep tagged versions; --no-keep-tags first removes the tags of versions older than --before.")] = True,
    grace: Annotated[float, typer.Option(
        help="Seconds: files younger than this are spared (another host's writer may not have published them).",
    )] = 3600.0,
    cache_only: Annotated[bool, typer.Option(
        "--cache-only", help="Only delete the read cache's copies no kept version reads, retiring nothing and "
                             "touching nothing of the store: for a reading host's own --cache-dir, which the "
                             "writer's cleanup never sees.")] = False,
) -> None:
    """Retire versions older than BEFORE and delete the files no kept version uses; print the retired versions."""
    if not 0 <= grace < float("inf"):  # also refuses nan
        raise SchemaError(f"--grace must be a finite number of seconds, zero or more, got {grace}")
    handle = _open(store)
    if cache_only:
        if before is not None or not keep_tags:
            raise SchemaError("--cache-only retires no version: it takes neither --before nor --no-keep-tags")
        held = _bytes_under(handle.cache_dir)
        handle.cleanup_cache(grace_s=grace)
        _err.print(f"freed {human_bytes(max(0, held - _bytes_under(handle.cache_dir)))} of the read cache "
                   f"{handle.cache_dir}" + (f" (copies younger than --grace {grace:g} s stay)" if grace else ""),
                   highlight=False)
        return
    latest = handle.latest_version
    tags = handle.tags()
    if before is None or before == "latest":
        before = latest
    elif before in tags:
        before = tags[before]
    elif before.isascii() and before.isdecimal() and 0 <= int(before) <= latest:  # "３" is decimal to Python
        before = int(before)
    else:
        raise SchemaError(f"--before {before} is neither a version of {store} (0 to the latest, {latest}), "
                          f"'latest', nor one of its tags ({', '.join(sorted(tags)) or 'none'})")
    untagged = []
    if not keep_tags:
        handle.versions()  # every manifest checked first: a damaged one fails the command before a tag goes
        untagged = handle._log.untag_before(before)
    held = _bytes_under(handle.path, handle.cache_dir)
    try:
        retired = handle.cleanup(before, grace_s=grace)
    except BaseException:
        if untagged:  # gone already: unsaid, a failed run read as one that changed nothing (s45D)
            _err.print(f"removed tags {', '.join(untagged)} before the cleanup failed: run it again to retire "
                       "their versions", highlight=False)
        raise
    for version in retired:
        print(version)
    pinned = sorted({v for v in handle.tags().values() if v < before})
    shown = ", ".join(map(str, pinned[:10])) + (f" and {len(pinned) - 10} more" if len(pinned) > 10 else "")
    freed = max(0, held - _bytes_under(handle.path, handle.cache_dir))
    _err.print(f"retired {_counted(len(retired), 'version')} older than {before}"
               + (f"; removed tags {', '.join(untagged)}" if untagged else "")
               + (f"; kept tagged versions {shown}" if pinned else "")
               + f"; freed {human_bytes(freed)}"
               + (f" (files younger than --grace {grace:g} s stay until a later cleanup)" if grace else ""),
               highlight=False)


def _bytes_under(*folders: Path) -> int:
    """Bytes of the files under ``folders`` (each counted once: a cache may sit inside the store)."""
    seen, total = set(), 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue  # gone meanwhile
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


@app.command()
def pointers(
    store: StoreArg,
    requests: Annotated[Path, typer.Argument(
        help="Parquet file: user_id (or the store's --user-col), request_ts, any other columns.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Example log to write (Parquet).", show_default=False)],
    version: Annotated[str | None, typer.Option(help="Version or tag served from.", show_default="latest")] = None,
    time_unit: Annotated[TimeUnit | None, typer.Option(
        help="What integer request times count (needed where the store counts a unit), converted exactly to "
             "the store's; a timestamp request_ts brings its own.", show_default=False)] = None,
    force: ForceOpt = False,
) -> None:
    """Log REQUESTS as examples with pointers into the store, as online does."""
    _check_arguments(store, requests, "requests file")
    _check_output(out, force, "--out", [requests], store)
    handle = _open(store, version)
    table = _with_user_id(_read_parquet(requests, "requests", handle.schema.id_columns), handle.schema, requests)
    table = _integer_times(table, ["request_ts"], None if time_unit is None else time_unit.value, handle.schema,
                           requests)
    examples = log_examples(handle, table)
    write_log(examples, out)
    _err.print(f"wrote {_counted(examples.num_rows, 'example')} with pointers into version {handle.version} to {out}",
               highlight=False)


@app.command()
def materialize(
    store: StoreArg,
    examples: Annotated[Path, typer.Argument(help="Example log (Parquet, with pointers), or a folder of part "
                                             "files (Spark's output).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write (with --tenants: a directory, one "
                                      "NAME.parquet per tenant).", show_default=False)],
    max_len: Annotated[int | None, typer.Option("--max-len", help="Newest events per example.",
                                                show_default=False)] = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns.", show_default="all payload")] = None,
    tenants: Annotated[Path | None, typer.Option(help="Tenant config (TOML): every tenant in one pass, instead of "
                                                 "--max-len/--columns.", show_default=False)] = None,
    keep: Annotated[str | None, typer.Option(help=(
        "Comma-separated example-log columns to copy over (keys and labels: without them an output holds the "
        "histories alone, row for row in log order)."))] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 1024,
    verify: Annotated[bool, typer.Option(help="Check each history against its pointer's checksum.")] = True,
    drop_deleted: Annotated[bool, typer.Option(
        help="Leave out the examples of users deleted from the store since their pointer's version (their changed "
             "histories are otherwise an error).")] = False,
    force: ForceOpt = False,
) -> None:
    """Rebuild each example's history: one row per example, a list column per column.

    Rows follow the example log's order (each tenant's file too); --keep copies the
    log's columns beside them (user_id,label, ...) to join or train on."""
    if (tenants is None) == (max_len is None) or (tenants is not None and columns is not None):
        raise SchemaError("give either --max-len (and optionally --columns) or --tenants CONFIG")
    if batch_size < 1:
        raise SchemaError(f"--batch-size must be positive, got {batch_size}")
    _check_arguments(store, examples, "example log")
    log = ExampleLog(examples)  # checked now: a refusal makes no output
    handle = _open(store)
    if tenants is not None:
        config = load_tenants(_input_file(tenants, "tenant config"), handle.schema)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file; with --tenants it names a directory")
        if out.is_symlink() and not out.exists():
            raise FileNotFoundError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
                                    "make that directory, or name another")
        usable_path(out)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
        for name in config:  # before the folder is made: a refusal changes nothing
            _check_output(out / f"{name}.parquet", force, "--out", [examples, tenants], store,
                          folder_made_later=True)
    else:
        _check_output(out, force, "--out", [examples], store)
        config = {"": Projection(max_len, _columns(columns))}
    total = log.num_rows  # the progress bar's
    kept = _columns(keep, "--keep") if keep else ()
    with _progress() as bar:
        task = bar.add_task("materialize", total=total)
        advance = lambda n: bar.update(task, completed=n)  # noqa: E731
        if tenants is None:
            written = materialize_log(handle, examples, config[""], out, batch_size, kept, verify=verify,
                                      drop_deleted=drop_deleted, progress=advance)
        else:  # (it makes the folder, and removes it if the run fails)
            paths = materialize_log_tenants(handle, examples, config, out, batch_size, kept, verify=verify,
                                            drop_deleted=drop_deleted, progress=advance)
            written = pq.read_metadata(next(iter(paths.values()))).num_rows
    for name, projection in config.items():
        where = out / f"{name}.parquet" if name else out
        label = f"{name}: " if name else ""
        _err.print(f"{label}wrote {_counted(written, 'history', 'histories')} (max {projection.max_len} events of "
                   f"{', '.join(projection.resolve(handle.schema))}) to {where}", highlight=False)
    if written < total:
        _err.print(f"left out the {total - written:,} examples of users deleted since their pointers' versions "
                   "(--drop-deleted)", highlight=False)
    elif not verify and (deleted := len(handle.deleted_users())):  # unchecked, they look like users without events
        _err.print(f"note: {deleted:,} {'user was' if deleted == 1 else 'users were'} deleted from {store}; "
                   "unchecked (--no-verify), any examples of theirs logged before (this log may hold none) were "
                   "written with the events left of them (none or fewer); --drop-deleted leaves them out",
                   highlight=False)
    others = sorted(p.name for p in out.glob("*.parquet") if p.stem not in config and not p.name.startswith(
        (".", "_"))) if tenants is not None else []  # (hidden: a killed run's temporaries, which readers skip, s36F)
    if others:  # an earlier config's tenants: left alone (lateseq removes no file it was not asked to write)
        _err.print(f"note: {out} also holds {others}, which this run did not write (tenants of another config?); "
                   f"a job that reads every file of {out} reads them too", highlight=False)


@app.command()
def loader(
    store: StoreArg,
    examples: Annotated[Path, typer.Argument(help="Example log (Parquet, with pointers), or a folder of part "
                                             "files (Spark's output).", show_default=False)],
    max_len: Annotated[int | None, typer.Option("--max-len", help="Newest events per example.",
                                                show_default=False)] = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns.", show_default="all payload")] = None,
    tenants: Annotated[Path | None, typer.Option(help="Tenant config (TOML), with --tenant, instead of "
                                                 "--max-len/--columns.", show_default=False)] = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant of --tenants to load for.",
                                               show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 1024,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes (0: this one).")] = 0,
    shuffle: Annotated[bool, typer.Option(help="Shuffle (the dataset's two-level shuffle).")] = True,
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 0,
    affinity: Annotated[bool, typer.Option(help="Group each shuffle window's examples by user.")] = False,
    copartition: Annotated[bool, typer.Option(help="The log was written by copartition_log; deal it "
                                              "to workers by the store's partitions.")] = False,
    prefetch: Annotated[bool, typer.Option(help="Make batch i+1 in a thread while batch i is used.")] = False,
    drop_deleted: Annotated[bool, typer.Option("--drop-deleted", help="Leave out the examples of users deleted "
                                               "since their pointer's version.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many batches.", show_default="all")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here too.")] = None,
    force: ForceOpt = False,
) -> None:
    """Run the PyTorch loader over an example log, as a trainer would, and print its metrics."""
    try:
        from torch.utils.data import DataLoader

        from lateseq.torch import ExampleDataset, LoaderMetrics
    except ImportError as exc:
        _fail(f"lateseq loader needs PyTorch: pip install 'lateseq[torch]' ({exc})")
    if (tenants is None) == (max_len is None) or (tenants is None) != (tenant is None) or (
            tenants is not None and columns is not None):
        raise SchemaError("give either --max-len (and optionally --columns) or --tenants CONFIG --tenant NAME")
    for option, value, least in (("--workers", workers, 0), ("--limit", limit, 1)):
        if value is not None and value < least:
            raise SchemaError(f"{option} must be at least {least}, got {value}")
    _check_arguments(store, examples, "example log")
    if json_path is not None:
        _check_output(json_path, force, "--json", [examples, *([tenants] if tenants else [])], store)
    handle = _open(store)
    if tenants is not None:
        config = load_tenants(_input_file(tenants, "tenant config"), handle.schema)
        if tenant not in config:
            raise SchemaError(f"{tenants} has no tenant {tenant!r}; it has {sorted(config)}")
        projection = config[tenant]
    else:
        projection = Projection(max_len, _columns(columns))
    dataset = ExampleDataset(handle, examples, projection, batch_size=batch_size,
                             shuffle=shuffle, seed=seed, affinity=affinity, copartition=copartition,
                             prefetch=prefetch, drop_deleted=drop_deleted)
    metrics = LoaderMetrics()
    started = time.perf_counter()
    first: tuple[float, int] | None = None  # (when, examples) the first batch arrived: workers started, kernels loaded
    for count, batch in enumerate(metrics.watch(DataLoader(dataset, batch_size=None, num_workers=workers)), 1):
        first = first or (time.perf_counter() - started, len(batch))
        if count == limit:
            break
    wall = time.perf_counter() - started
    first_s, first_examples = first or (wall, 0)
    figures = {
        "batches": metrics.batches, "examples": metrics.examples, "seconds": wall,
        "examples_per_s": metrics.examples / wall if wall else 0.0, "first_batch_s": first_s,
        "examples_per_s_after_first_batch": ((metrics.examples - first_examples) / (wall - first_s)
                                             if metrics.batches > 1 and wall > first_s else None),
        "waited_s": metrics.waited_s, "waited_share": metrics.waited_s / wall if wall else 0.0,
        "busy_s": metrics.busy_s, "examples_per_s_per_process": metrics.examples_per_s,
        "read_s": metrics.read_s, "materialize_s": metrics.materialize_s,
        "disk_read_bytes": metrics.disk_read_bytes, "history_bytes": metrics.history_bytes,
        "shared_histories": metrics.shared_histories, "shared_share": metrics.shared_share,
        "deleted_dropped": metrics.deleted_dropped, "workers": workers, "prefetch": prefetch, "affinity": affinity,
        "max_len": projection.max_len,
        "columns": list(projection.resolve(handle.schema)),
    }
    table = Table("metric", "value")
    for label, value in (
            ("batches, examples", f"{metrics.batches:,}, {metrics.examples:,}"),
            ("examples/s (as the trainer got them)", f"{figures['examples_per_s']:,.0f}"),
            ("first batch after (workers started, kernels loaded)", f"{first_s:.2f} s"),
            ("examples/s after the first batch", "–" if figures["examples_per_s_after_first_batch"] is None
             else f"{figures['examples_per_s_after_first_batch']:,.0f}"),
            ("time the trainer waited", f"{metrics.waited_s:.2f} s of {wall:.2f} s"),
            ("examples/s per loader process (making only)", f"{metrics.examples_per_s:,.0f}"),
            ("making: log rows, sequences, everything", f"{metrics.read_s:.2f} s, {metrics.materialize_s:.2f} s, "
                                                        f"{metrics.busy_s:.2f} s"),
            ("read from storage", f"{metrics.disk_read_bytes / 1e6:,.1f} MB"),
            ("history values copied out", f"{metrics.history_bytes / 1e6:,.1f} MB"),
            ("examples sharing a history in their batch", f"{metrics.shared_share:.1%}"),
            *((("examples of deleted users left out", f"{metrics.deleted_dropped:,}"),) if drop_deleted else ())):
        table.add_row(label, value)
    _print_table(table)
    if json_path is not None:
        with replaced_when_written(json_path) as tmp:
            tmp.write_text(json.dumps(figures, indent=2))


tenants_app = _Typer(cls=_Group, help="Tenant configs: the projections of several models.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")


def _window_text(projection: Projection, schema: Schema) -> str:
    """A tenant's window as given, and as a span of time where the store counts a unit: an
    integer window is in the store's unit (259200 in a milliseconds store: 4.3 minutes)."""
    if projection.window is None:
        return ""
    if schema.time_unit is None:
        return str(projection.window)
    seconds = projection.window_in(schema) / ticks_per_second(schema.time_unit)
    count, name = next(((seconds / size, name) for name, size in (("day", 86_400), ("hour", 3_600), ("minute", 60))
                        if seconds >= size), (seconds, "second"))
    span = f"{count:.3g} {name}{'' if f'{count:.3g}' == '1' else 's'}"
    return f"{projection.window} ({span})"


@tenants_app.command("check")
def tenants_check(
    config: Annotated[Path, typer.Argument(help="Tenant config (TOML).", show_default=False)],
    store: StoreArg,
) -> None:
    """Check a tenant config against a store's schema; list every problem."""
    handle = _open(store)
    tenants = load_tenants(_input_file(config, "tenant config"), handle.schema)
    table = Table("tenant", "columns", "max_len", "window", "filter", "transforms")
    for name, p in tenants.items():
        where = "" if p.where is None else str(p.where)
        table.add_row(name, ", ".join(p.resolve(handle.schema)), str(p.max_len), _window_text(p, handle.schema),
                      where, ", ".join(f"{k}={v}" for k, v in p.transforms.items()))
    _print_table(table)
    _err.print(f"{config}: {len(tenants)} tenant(s) fit {store}", highlight=False)


def _fits_in_memory(what: str, users: int, bytes_each: float, measured: str) -> None:
    """Refuses a size (named, a number or a default) that would need more memory than this
    machine has (from a measured run's peak), before the run: it died midway with numpy's
    MemoryError (s34H)."""
    need, have = users * bytes_each, physical_memory()
    if need > have:
        raise SchemaError(f"{what} would need about {need / 1e9:,.0f} GB of memory ({measured}), more "
                          f"than this machine's {have / 1e9:,.0f} GB (its container's, where a cgroup limits it)")


@app.command()
def bench(
    scale: Annotated[str, typer.Option(help="tiny (seconds), small (minutes), full, or a number of users.")] = "small",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart here (needs the bench extra).")] = None,
    force: ForceOpt = False,
) -> None:
    """Run the reference multi-tenant benchmark (lateseq vs the Fat Row union)."""
    if scale not in ("tiny", "small", "full") and not (scale.isascii() and scale.isdecimal() and int(scale) > 0):
        raise SchemaError(f"--scale must be tiny, small, full or a number of users (a positive integer), "
                          f"not {scale!r}")
    users = {"tiny": 100, "small": 20_000, "full": 200_000}.get(scale) or int(scale)  # benchmarks/tenants.py's
    _fits_in_memory(f"--scale {scale} ({users:,} users)" if not scale.isdecimal() else f"--scale {users:,}", users,
                    0.5e6, "a run of 20,000 users, --scale small, peaked at 9.6 GB")
    outputs = [(option, path) for option, path in (("--json", json_path), ("--plot", plot)) if path is not None]
    for option, path in outputs:  # checked before the benchmark's minutes, not after them
        _check_output(path, force, option)
    if len(outputs) == 2 and json_path.resolve() == plot.resolve():  # type: ignore[union-attr]
        raise FileExistsError(f"--json and --plot name the same file, {json_path}; give each its own")
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "tenants.py"
    if not script.is_file():
        raise FileNotFoundError("lateseq bench runs benchmarks/tenants.py from a source checkout of lateseq "
                                "(pip install -e '.[bench]' in a clone); this installation has none")
    command = [sys.executable, str(script), "--scale", scale]
    command += ["--json", str(json_path)] if json_path is not None else []
    command += ["--plot", str(plot)] if plot is not None else []
    raise typer.Exit(subprocess.call(command))


@app.command()
def strip(
    store: StoreArg,
    examples: Annotated[Path, typer.Argument(help="Two-tier example log (Parquet).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Example log to write (Parquet).", show_default=False)],
    force: ForceOpt = False,
    drop_deleted: Annotated[bool, typer.Option(
        help="Also drop the tails of users deleted from the store (their records then audit as deleted).")] = False,
) -> None:
    """Drop the inline tails that a kept version covers; batch rebuilds stay exact."""
    from lateseq.twotier import is_two_tier, strip_tails

    _check_arguments(store, examples, "example log")
    _check_output(out, force, "--out", [examples], store)
    log = _read_parquet(examples, "example log")
    if not is_two_tier(log):
        raise SchemaError(f"{examples} holds plain pointers, no online tails to strip")
    stripped, count = strip_tails(_open(store), log, drop_deleted)
    write_log(stripped, out)
    _err.print(f"stripped {count:,} of {log.num_rows:,} tails; {out} is "
               f"{out.stat().st_size:,} bytes (was {examples.stat().st_size:,})", highlight=False)


@app.command()
def copartition(
    store: StoreArg,
    examples: Annotated[Path, typer.Argument(help="Example log (a Parquet file, or a folder of them).",
                                             show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Example log to write (Parquet).", show_default=False)],
    row_group_rows: Annotated[int, typer.Option(help="Rows a row group holds at most.")] = 65536,
    force: ForceOpt = False,
) -> None:
    """Write EXAMPLES again grouped by the store's partitions, for `loader --copartition`."""
    _check_arguments(store, examples, "example log")
    _check_output(out, force, "--out", [examples], store)
    log = _read_parquet(examples, "example log")
    handle = _open(store)
    copartition_log(handle, log, out, row_group_rows=row_group_rows, overwrite=True)
    groups = pq.read_metadata(out).num_row_groups
    _err.print(f"{log.num_rows:,} examples in {groups:,} row groups of {handle.schema.partitions} partitions; "
               f"each worker of `lateseq loader --copartition` reads its own partitions' segments", highlight=False)


@app.command()
def verify(
    store: StoreArg,
    deep: Annotated[bool, typer.Option(help="Also decode every segment again and re-hash every event.")] = False,
) -> None:
    """Check every file the store's kept versions need (an fsck); exit 1 on any problem."""
    from lateseq.audit import verify as run_verify

    handle = _open(store)
    problems = run_verify(handle, deep=deep)
    for problem in problems:
        print(f"{problem.path}: {problem.message}")
    if problems:  # listing the versions could stumble on the same damage: no count
        _fail(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {store}")
    kept = len(handle.versions())
    _err.print(f"{store}: {kept} kept versions, every file sound{' (deep)' if deep else ''}", highlight=False)


def _with_user_id(table: pa.Table, schema: Schema, source: Path) -> pa.Table:
    """``table`` whose user ids are in a column named as the store's events name them
    (``--user-col`` at ingest), that column read as the ``user_id`` that pointers carry.
    Both named is refused: ``user_id`` may be another column of the store's (an event id),
    and the one read was a guess (s40D: a delete by it left the users' events)."""
    if schema.user_col == "user_id" or schema.user_col not in table.column_names:
        return table
    if "user_id" in table.column_names:
        raise SchemaError(f"{source} has both a user_id column and {schema.user_col!r}, the store's user column: "
                          "leave out the one that does not hold the users")
    return table.rename_columns(["user_id" if n == schema.user_col else n for n in table.column_names])


@app.command()
def delete(
    store: StoreArg,
    users: Annotated[Path, typer.Argument(help="Parquet file with a user_id column (or the store's --user-col).",
                                          show_default=False)],
) -> None:
    """Publish a version without USERS' events; print its number and what still holds them."""
    _check_arguments(store, users, "users file")
    handle = _open(store)
    table = _with_user_id(_read_parquet(users, "users", handle.schema.id_columns), handle.schema, users)
    if "user_id" not in table.column_names:
        other = f" or {handle.schema.user_col}" if handle.schema.user_col != "user_id" else ""
        raise SchemaError(f"{users} has no user_id{other} column (columns: {table.column_names})")
    if table.column("user_id").null_count:
        raise SchemaError(f"{users}: user_id has {table.column('user_id').null_count} null values")
    events = [c for c in table.column_names if c in {handle.schema.time_col, "request_ts", *handle.schema.columns}]
    if events:  # an events file or example log given by mistake deleted every user in it (s43B)
        raise SchemaError(f"{users} holds {events} besides user ids, as an events file or example log does: "
                          "delete would remove every user in it; give a file of the ids of the users to delete")
    ids = as_user_ids(table.column("user_id"), f"{users}: user_id")  # as Store.delete reads them: exactly
    new = _retried(lambda: handle.delete(ids))
    print(new.version)
    count = len(set(ids.tolist()))  # "of 1 users" read as user id 1
    if not count:  # (any user given, with events or not, is recorded in a new version)
        _err.print(f"{users} names no user: nothing to do", highlight=False)
        return
    given, held = ("the user given", "it") if count == 1 else (f"the {count:,} users given", "they")
    older = sorted({v.version for v in new.versions() if v.version < new.version})
    pinned = {name: v for name, v in new.tags().items() if v < new.version}
    with contextlib.suppress(LateseqError):  # (the version before, retired meanwhile: no count)
        removed = new.checkout(new.version - 1).num_events - new.num_events
        if removed == 0:  # a typo'd id looked like an erasure done (s61G)
            _err.print(f"note: the version before held no event of {given} either: nothing was removed",
                       highlight=False)
    _err.print(f"version {new.version} holds no event of {given}. Still holding any events {held} had: "
               f"{len(older)} older kept versions (`lateseq cleanup {store}` retires them"
               + (f"; tags {sorted(pinned)} pin some: untag them or use --no-keep-tags" if pinned else "")
               + "), read caches on other hosts and in --cache-dir folders (`lateseq --cache-dir DIR cleanup "
               f"{store} --cache-only` there clears them), inline tails "
               "in two-tier example logs (`lateseq strip --drop-deleted`), and a two-tier store's mutable tier "
               "(`tier.delete(users)`, or its next fold stores them again).", highlight=False)


@app.command()
def audit(
    store: StoreArg,
    examples: Annotated[Path, typer.Argument(help="Example log (Parquet).", show_default=False)],
    sample: Annotated[int | None, typer.Option(help="Examples to check.", show_default="all")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
) -> None:
    """Rebuild examples and explain each mismatch; exit 1 if anything mismatches."""
    from lateseq.audit import audit as run_audit

    if sample is not None and sample < 1:
        raise SchemaError(f"--sample must be positive, got {sample}")
    _check_arguments(store, examples, "example log")
    report = run_audit(_open(store), _read_parquet(examples, "example log"), sample, seed)
    table = Table(title=f"audit of {examples}")
    table.add_column("")
    table.add_column("examples", justify="right")
    table.add_row("checked", f"{report.checked:,} of {report.examples:,}")
    table.add_row("matched", f"{report.matched:,}")
    for cause, count in sorted(report.causes.items()):
        table.add_row(f"mismatch: {cause}", f"{count:,}")
    if report.checked < report.examples:  # a clean sample passed a log with 50 changed rows in 20,000 (s50A)
        # none in n: the exact one-sided 95% bound, 1 - 0.05 ** (1 / n) (3/n, the rule of three, said 300% at n=1)
        table.caption = (f"a random sample: {len(report.mismatches):,} of {report.checked:,} mismatched, about "
                         f"{_percent(len(report.mismatches) / report.checked)} of the log" if report.mismatches else
                         f"a random sample: none of {report.checked:,} mismatched, so likely fewer than "
                         f"{_percent(1 - 0.05 ** (1 / report.checked))} of the log does (95% confidence); audit "
                         "every example (no --sample) to be sure")
    _print_table(table)
    if report.mismatches:
        deleted = sorted(row for row, cause in report.mismatches.items() if cause == "deleted")
        others = sorted(row for row, cause in report.mismatches.items() if cause != "deleted")
        _fail("; ".join(
            ([f"{len(others):,} examples do not match what online served (first rows: {others[:5]})"] if others
             else []) + ([f"{len(deleted):,} examples were served from a version before their user's deletion (first "
                          f"rows: {deleted[:5]}): leave them out of training (the rows where "
                          "Store.deleted_after(user_id, uih_version) is true)"] if deleted else [])))


def _percent(share: float) -> str:
    """A share as a percentage of two significant digits (0.0015%, 95%), never 0.00% for a
    share that is not 0."""
    return f"{float(f'{share * 100:.2g}'):.12f}".rstrip("0").rstrip(".") + "%"


def _in_range(option: str, value: float, least: float, most: float = float("inf"), note: str = "",
              above: bool = False) -> None:
    """Refuses ``option``'s ``value`` outside [least, most] (``above``: more than ``least``),
    nan and infinity included, naming the option, the value and the range."""
    if math.isfinite(value) and (value > least if above else value >= least) and value <= most:
        return
    low = f"more than {least:,}" if above else f"at least {least:,}"
    high = "" if most == float("inf") else f" and at most {most:,}"
    raise SchemaError(f"{option} must be a number {low}{high}{' ' + note if note else ''}, got {value}")


@app.command()
def simulate(
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    users: Annotated[int, typer.Option(help="Users.")] = 300,
    days: Annotated[float, typer.Option(help="Days of traffic.")] = 4.0,
    events_per_day: Annotated[float, typer.Option(help="Events per user per day.")] = 30.0,
    requests_per_day: Annotated[float, typer.Option(help="Requests per user per day.")] = 4.0,
    lag: Annotated[float, typer.Option(help="Mean ingestion lag, seconds.")] = 30.0,
    late_share: Annotated[float, typer.Option(help="Share of events arriving 1 h to 2 days late.")] = 0.05,
    out_of_order_share: Annotated[float, typer.Option(help="Share stamped up to 15 min early.")] = 0.10,
    duplicate_share: Annotated[float, typer.Option(help="Share delivered twice.")] = 0.03,
    tie_share: Annotated[float, typer.Option(help="Share sharing the previous event's second.")] = 0.30,
    compaction_hours: Annotated[float, typer.Option(help="Fold and compaction period, hours.")] = 6.0,
    max_len: Annotated[int, typer.Option(help="Events the online model reads.")] = 50,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
    force: ForceOpt = False,
) -> None:
    """Serve, fold and rebuild a synthetic stream; compare with the naive join."""
    from lateseq.cli import simulate as scenario
    from lateseq.cli.simulate import SimulationConfig
    from lateseq.cli.simulate import simulate as run

    if json_path is not None:
        _check_output(json_path, force, "--json")
    _in_range("--seed", seed, 0)
    _in_range("--users", users, 1, scenario.MAX_EVENTS, "(memory would run out)")
    _in_range("--days", days, 0.001, note="(86 seconds)")
    for option, value in (("--events-per-day", events_per_day),
                          ("--requests-per-day", requests_per_day), ("--compaction-hours", compaction_hours)):
        _in_range(option, value, 0, above=True)
    _in_range("--lag", lag, 0, scenario.MAX_LAG_S, "(longer delays are --late-share's, 1 hour to 2 days)")
    for option, value in (("--late-share", late_share), ("--out-of-order-share", out_of_order_share),
                          ("--duplicate-share", duplicate_share), ("--tie-share", tie_share)):
        _in_range(option, value, 0, 1)
    _in_range("--max-len", max_len, 1, 2**31 - 1)
    scale = f"--users {users} x --days {days:g}"
    for what, count, most, each, remedy in (
            (f"{scale} x --events-per-day {events_per_day:g}", users * days * events_per_day,
             scenario.MAX_EVENTS, "events, about 0.6 KB of memory each", "lower one of them"),
            (f"{scale} x --requests-per-day {requests_per_day:g}", users * days * requests_per_day,
             scenario.MAX_REQUESTS, "requests, about 18 KB of memory each in the brute-force checks",
             "lower one of them"),
            (f"(--days {days:g} + 3) x 24 / --compaction-hours {compaction_hours:g}",
             (days + 3) * 24 / compaction_hours, scenario.MAX_FOLDS, "folds, a version of about 0.4 MB each",
             "raise --compaction-hours or lower --days")):
        if count > most:
            raise SchemaError(f"{what} makes about {count:,.0f} {each}; the simulation runs at most {most:,} "
                              f"(memory would run out): {remedy}")
    config = SimulationConfig(seed, users, days, events_per_day, requests_per_day, lag, late_share,
                              out_of_order_share, duplicate_share, tie_share, compaction_hours, max_len)
    with _progress() as bar:
        task = bar.add_task("simulate", total=100)
        result = run(config, progress=lambda _, done: bar.update(task, completed=100 * done))
    table = Table(title=f"O2O simulation: {result['examples']:,} requests, {result['events']:,} events "
                        f"({result['deliveries']:,} deliveries), {result['versions']} versions")
    for name in ("", "match rate", "future events leaked"):
        table.add_column(name, justify="left" if not name else "right")
    table.add_row("online served vs brute force", f"{result['served_vs_truth_match_rate']:.4f}", "")
    table.add_row("lateseq, streaming (tail inline)", f"{result['streaming_match_rate']:.4f}",
                  f"{result['streaming_leaked_events']:,}")
    table.add_row("lateseq, batch (tail stripped)", f"{result['batch_match_rate']:.4f}",
                  f"{result['batch_leaked_events']:,}")
    table.add_row("naive join on event time", f"{result['naive_match_rate']:.4f}",
                  f"{result['naive_leaked_events']:,}")
    _print_table(table)
    _out().print(f"example log: {result['log_bytes_per_example_inline']:.1f} bytes/example with tails inline, "
                 f"{result['log_bytes_per_example_stripped']:.1f} bytes/example after stripping "
                 f"{result['tails_stripped']:,} tails", highlight=False)
    if json_path is not None:
        with replaced_when_written(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    if result["streaming_match_rate"] < 1 or result["batch_match_rate"] < 1 or result["leaked_events"]:
        _fail("lateseq did not rebuild every example exactly")


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="movielens (MovieLens-1M) or synthetic.")] = "movielens",
    users: Annotated[int | None, typer.Option(help="Users of the synthetic dataset.", show_default="200,000")] = None,
    examples: Annotated[int | None, typer.Option(help="Synthetic examples.", show_default="10 per user")] = None,
    cadence: Annotated[str | None, typer.Option(
        help="MovieLens commit period: month, week or day.", show_default="the coarsest leaving most "
             "histories non-empty, else day")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Keep the files here.", show_default="a temporary dir")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and of sampling.")] = 0,
    fat_sample: Annotated[int | None, typer.Option(
        help="Examples built as Fat Rows and compared.", show_default="all for movielens, 200k for synthetic")] = None,
    force: Annotated[bool, typer.Option("--force", help="Use a --workdir that is not empty, replacing the "
                                                         "demo's files there.")] = False,
) -> None:
    """Ingest, log pointers, materialize and check every history against Fat Rows."""
    from lateseq.cli.demo import (  # the demo pulls in the datasets: load it only when asked
        SYNTHETIC_USERS,
        run_demo,
    )

    if dataset not in ("movielens", "synthetic"):
        raise SchemaError(f"--dataset must be movielens or synthetic, not {dataset!r}")
    if cadence is not None and cadence not in ("month", "week", "day"):
        raise SchemaError(f"--cadence must be month, week or day, not {cadence!r}")
    other = {"movielens": "synthetic", "synthetic": "movielens"}[dataset]
    for option, value, applies_to in (("--users", users, "synthetic"), ("--examples", examples, "synthetic"),
                                      ("--cadence", cadence, "movielens")):
        if value is not None and applies_to != dataset:  # silently ignored, it read as applied
            raise SchemaError(f"{option} applies to --dataset {applies_to} only, not {dataset}: leave it out, "
                              f"or pass --dataset {other}")
    for option, value in (("--users", users), ("--examples", examples), ("--fat-sample", fat_sample)):
        if value is not None and value < 1:
            raise SchemaError(f"{option} must be positive, got {value}")
    size = SYNTHETIC_USERS if users is None else users
    if dataset == "synthetic":  # its default size too
        what = f"--dataset synthetic ({size:,} users unless --users says)" if users is None else f"--users {size:,}"
        _fits_in_memory(what, size, 65e3, "a run of 20,000 users peaked at 1.3 GB")
    if workdir is not None:
        existing = next(p for p in (workdir, *workdir.parents) if p.exists() or p.is_symlink())
        if not existing.is_dir():
            where = "" if existing == workdir else f": {existing}"
            raise NotADirectoryError(f"--workdir {workdir}{where} is a file, not a directory")
    if workdir is not None and workdir.is_dir() and any(workdir.iterdir()) and not force:
        raise FileExistsError(f"--workdir {workdir} is not empty; the demo replaces its store and files there: "
                              "pass --force, or pick an empty directory")
    summary = run_demo(dataset, users=size, workdir=workdir, seed=seed,
                       cadence=cadence, examples=examples, fat_sample=fat_sample, console=_err)
    _err.print(f"demo finished in {summary['seconds']:.1f}s", highlight=False)
    if summary["mismatches"] or summary["checksum_mismatches"]:
        _fail(f"{summary['mismatches']} histories differ from the Fat Rows and "
              f"{summary['checksum_mismatches']} from their checksums")



