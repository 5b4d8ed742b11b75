"""Slurm accounting records: the ``sacct`` command gpuhub runs and pure parsers of its output.

Rules (see docs/accounting.md):

* ``-X`` (allocation lines only: step lines repeat the job's GPUs), ``-D`` (every run of a requeued
  job, told apart by its Submit time), ``-P`` with a fixed ``--format``, explicit ``-S``/``-E`` in UTC.
* GPUs come from AllocTRES: ``gres/gpu=N`` when present, otherwise the sum of the typed
  ``gres/gpu:TYPE=N`` entries, never both added. The GPU model is the typed key (several: joined
  with ``+``), else the model of the site partition the job ran in.
* A run that never started (pending) is skipped; one still running (End ``Unknown``) is provisional.
"""

from __future__ import annotations

import io
import marshal
import os
import pickle
import queue
import signal
import stat
import sys
import threading
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from time import monotonic
from typing import Any, NamedTuple, NoReturn

from gpuhub.accounting.records import UsageRow

FIELDS = (
    "JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Submit", "Start", "End",
    "ElapsedRaw", "AllocTRES", "NNodes", "AllocCPUS", "Cluster",
)
FORMAT = ",".join(FIELDS)
_NFIELDS = len(FIELDS)
_NO_TIME = frozenset({"Unknown", "None", "", "N/A"})
_CACHE_LIMIT = 50_000  # distinct AllocTRES strings kept; bounded so memory stays flat on any input


def sacct_argv(start: str, end: str, all_users: bool) -> list[str]:
    """The collector's command. ``env`` makes the remote sacct print and read times in UTC, in the
    ISO form, whatever the login shell sets (``TZ``, ``SLURM_TIME_FORMAT``)."""
    argv = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard", "sacct", "-X", "-D", "-P", "--noheader", "--noconvert",
            "-S", start, "-E", end, f"--format={FORMAT}"]
    if all_users:
        argv.append("--allusers")
    return argv


@dataclass(frozen=True)
class GpuAlloc:
    gpus: float
    model: str  # from the typed keys; "" when AllocTRES has only gres/gpu=N
    tres: str  # the gres/gpu entries, as found


NO_GPU = GpuAlloc(0, "", "")


def parse_alloc_tres(text: str) -> GpuAlloc:
    """GPUs in an AllocTRES string.

    >>> parse_alloc_tres("billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2,mem=1024M,node=1")
    GpuAlloc(gpus=2.0, model='a100', tres='gres/gpu:a100=2,gres/gpu=2')
    """
    if "gres/gpu" not in text:
        return NO_GPU
    total: float | None = None
    typed: dict[str, float] = {}
    kept = []
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key == "gres/gpu":
            total = _number(value)
        elif key.startswith("gres/gpu:"):
            name = key[len("gres/gpu:"):]
            typed[name] = typed.get(name, 0.0) + _number(value)
        else:
            continue  # gres/gpumem, gres/gpuutil and the rest are not GPU counts
        kept.append(item)
    gpus = total if total is not None else sum(typed.values())
    model = "+".join(sorted(name for name, n in typed.items() if n > 0))
    return GpuAlloc(float(gpus), model, ",".join(kept))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


@dataclass
class ParseStats:
    lines: int = 0
    malformed: int = 0
    pending: int = 0
    no_gpu: int = 0
    running: int = 0
    rows: int = 0
    first_bad: str | None = None

    def bad(self, line: str) -> None:
        self.malformed += 1
        if self.first_bad is None:
            self.first_bad = line.rstrip("\n")[:200]


ModelResolver = Callable[[str, str], str]


def plain_model(typed: str, partition: str) -> str:
    return typed


class _Cache(dict):  # type: ignore[type-arg]
    """A dict that computes what it lacks (bounded, so memory stays flat on any input)."""

    def __init__(self, compute: Callable[[Any], Any], limit: int = _CACHE_LIMIT) -> None:
        super().__init__()
        self.compute, self.limit = compute, limit

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.compute(key)
        return value


def _gpu_info(key: tuple[str, str], resolve_model: ModelResolver) -> tuple[int | float, str, str] | None:
    tres, partition = key
    alloc = parse_alloc_tres(tres)
    if not alloc.gpus:
        return None
    gpus = int(alloc.gpus) if alloc.gpus.is_integer() else alloc.gpus
    return gpus, resolve_model(alloc.model, partition), alloc.tres


class AttrSet(NamedTuple):
    """What runs share (stored once per set): a run's cluster, owner, place and GPUs."""

    cluster: str
    user: str
    account: str
    partition: str
    qos: str
    gpu_tres: str
    gpus: int | float  # an int when whole
    gpu_model: str


class RollupKey(NamedTuple):
    """The part of a rollup key that comes from a run (the site and the month aside)."""

    account: str
    user: str
    partition: str
    gpu_model: str


RUN_WIDTH = 10  # values per run: RunChunk.cols
WALL_SHIFT = 32  # packed rollup sums: (GPU-seconds << WALL_SHIFT) + runs
_TABLE_LIMIT = 100_000  # attribute sets per table: past it the parser starts new tables (memory stays flat)


@dataclass
class RunChunk:
    """The runs of a few thousand sacct lines, laid out for the usage store's bulk path.

    ``cols`` holds RUN_WIDTH columns, in the order the store writes them: job_id, job_ref (0 when
    it is the job id), submit, start, end (None while running), wall seconds, nodes, CPUs, state,
    and the run's attribute set as an index into ``attrs``. ``attrs`` and ``keys`` are the parser's
    tables, shared by its chunks and growing; new lists when the parser starts anew.

    Chunks come in groups (what the store writes as one transaction): ``group_end`` marks the last
    chunk of one.
    """

    cols: list[list[Any]]
    attrs: list[AttrSet]
    keys: list[RollupKey]
    sums_by: list[tuple[int, int]]  # attrs index -> (keys index, GPUs when whole and positive, else 0)
    running: int
    group_end: bool

    def __len__(self) -> int:
        return len(self.cols[0])

    def rows(self) -> list[UsageRow]:
        attrs = self.attrs
        out = []
        for job_id, job_ref, submit, start, end, wall, nodes, cpus, state, a in zip(*self.cols, strict=True):
            e = attrs[a]
            out.append(_new_row(UsageRow, (
                e.cluster, job_id, job_ref if job_ref.__class__ is str else None, submit, start, end, wall, nodes,
                cpus, e.user, e.account, e.partition, e.qos, state, e.gpu_tres, e.gpus, e.gpu_model,
            )))
        return out

    def add_rollup(self, sums: dict[str, dict[int, int]], other: list[tuple[int, str, str | None, int]]) -> None:
        """Add the runs to rollup sums: the finished ones within one month with whole GPUs (nearly
        all) to ``sums`` (month -> index into ``keys`` -> (GPU-seconds << WALL_SHIFT) + runs), the
        others (running, across a month end, a fraction of a GPU) to ``other`` as (attrs index,
        start, end, wall seconds)."""
        cols, sums_by, shift = self.cols, self.sums_by, WALL_SHIFT
        month, month_sums = "\0", {}  # the month last summed in (a start never begins with NUL)
        for start, end, wall, a in zip(cols[3], cols[4], cols[5], cols[9], strict=True):
            k, gpus = sums_by[a]
            if gpus and end is not None and wall >= 0:
                if not start.startswith(month):
                    month = start[:7]
                    month_sums = sums.setdefault(month, {})
                if end.startswith(month):
                    month_sums[k] = month_sums.get(k, 0) + (wall * gpus << shift) + 1
                    continue
            other.append((a, start, end, wall))


def _whole(gpus: int | float) -> int:
    """The GPUs of runs summed as they come (whole and positive), else 0."""
    return gpus if gpus.__class__ is int and gpus > 0 else 0  # type: ignore[return-value]


_new_row = tuple.__new__  # a UsageRow without the Python-level __new__ (a quarter of the parse time)


class SacctRuns:
    """What :func:`parse_sacct` returns: an iterator of :class:`UsageRow`, which the usage store
    also knows how to take in bulk (:meth:`chunks`), without a row object per run."""

    def __init__(self, lines: Iterable[str], resolve_model: ModelResolver, stats: ParseStats | None,
                 cross_off: set[tuple[str, str, str, str]] | None) -> None:
        self._source = lines
        self._lines = iter(lines)
        self._resolve = resolve_model
        self.stats = stats if stats is not None else ParseStats()
        self._cross_off = cross_off
        self._rows: Iterator[UsageRow] | None = None

    def __iter__(self) -> SacctRuns:
        return self

    def __next__(self) -> UsageRow:
        if self._rows is None:
            self._rows = (row for chunk in self.chunks(1000, 1000) for row in chunk.rows())
        return next(self._rows)

    def chunks(self, size: int, group: int, group_seconds: float = 1.0, parallel: bool = False) -> Iterator[RunChunk]:
        """The runs, ``size`` (or fewer) per chunk, in groups of about ``group`` runs (fewer when
        the lines come slower than ``group_seconds`` per group).

        ``parallel``: parse in a forked process, so that the caller works on a chunk while the next
        ones are parsed on another core, when the platform allows and the input is worth it: a
        list or a file of many lines (not an iterator whose reading could have effects of its own).
        """
        args = (self._lines, self._resolve, self.stats, size, group, group_seconds, self._cross_off)
        if parallel and _fork_worthwhile(self._source):
            return _forked_chunks(*args)
        return _parse_chunks(*args)


def parse_sacct(
    lines: Iterable[str], resolve_model: ModelResolver = plain_model, stats: ParseStats | None = None,
    cross_off: set[tuple[str, str, str, str]] | None = None,
) -> SacctRuns:
    """Lines of ``sacct -P`` with :data:`FORMAT` -> one :class:`UsageRow` per started run with GPUs.

    Streams (a chunk of lines at a time). ``resolve_model(typed_model, partition)`` names the GPU
    model for reports (the site's ``gpu_model`` for a GRES type or a partition). Malformed lines
    are counted in ``stats``, not raised: one odd line must not stop a month's collection. The keys
    (cluster, job_id, submit, start) of the runs found are taken out of ``cross_off``.
    """
    return SacctRuns(lines, resolve_model, stats, cross_off)


def _parse_chunks(
    lines: Iterator[str], resolve_model: ModelResolver, stats: ParseStats, size: int, group: int,
    group_seconds: float, cross_off: set[tuple[str, str, str, str]] | None,
) -> Iterator[RunChunk]:
    """The parser: one pass, locals only (the hot path of a collection). A run's attribute set is
    found with one dict lookup on the raw fields it comes from; only a set not met before costs
    more (AllocTRES parsed, GPU model resolved)."""
    gpu_of = _Cache(lambda key: _gpu_info(key, resolve_model))
    attrs: list[AttrSet] = []
    keys: list[RollupKey] = []
    sums_by: list[tuple[int, int]] = []
    attr_index: dict[AttrSet, int] = {}
    key_index: dict[RollupKey, int] = {}
    by_fields: dict[tuple[str, ...], int] = {}  # (user, account, partition, qos, AllocTRES, cluster) -> attrs index
    strings: dict[str, str] = {}  # one object per distinct value kept in by_fields: lookups stay in cache
    no_time = _NO_TIME
    size = max(1, size)

    def attr_of(fields: tuple[str, ...]) -> int:
        if len(by_fields) >= _CACHE_LIMIT:
            by_fields.clear()
            strings.clear()
        user, account, partition, qos, tres, cluster = fields
        gpu = gpu_of[(tres, partition)]
        if gpu is None:
            a = -1
        else:
            entry = AttrSet(cluster.rstrip(), user, account, partition, qos, gpu[2], gpu[0], gpu[1])
            a = attr_index.get(entry, -1)
            if a < 0:
                key = RollupKey(account, user, partition, gpu[1])
                k = key_index.get(key)
                if k is None:
                    k = key_index[key] = len(keys)
                    keys.append(key)
                a = attr_index[entry] = len(attrs)
                attrs.append(entry)
                sums_by.append((k, _whole(gpu[0])))
        by_fields[tuple(strings.setdefault(f, f) for f in fields)] = a
        return a

    exhausted = False
    in_group = 0
    group_start = monotonic()
    while not exhausted:
        if len(attrs) >= _TABLE_LIMIT and not in_group:  # new tables; the chunks handed out keep theirs
            attrs, keys, sums_by, attr_index, key_index = [], [], [], {}, {}
            by_fields.clear()
            strings.clear()
        flat: list[Any] = []
        seen = pending = no_gpu = running = n = 0
        for line in lines:
            seen += 1
            fields = line.split("|")
            if len(fields) != _NFIELDS:
                if line.strip():
                    stats.bad(line)
                else:
                    seen -= 1
                continue
            (job_id, job_ref, user, account, partition, qos, state, submit, start, end, elapsed, tres, nnodes, ncpus,
             cluster) = fields
            if start in no_time:
                pending += 1
                continue
            key = (user, account, partition, qos, tres, cluster)
            a = by_fields.get(key)
            if a is None:
                a = attr_of(key)
            if a < 0:
                no_gpu += 1
                continue
            if end in no_time:
                end = None
                running += 1
            try:
                wall = int(elapsed)
                # A cheap shape check (a regex per field would cost a third of the parse): catches the
                # relative or locale formats a login shell's SLURM_TIME_FORMAT may impose.
                if start[10] != "T" or submit[10] != "T" or start[4] != "-" or (end is not None and end[10] != "T"):
                    raise ValueError(start)
                flat += (job_id, 0 if job_ref == job_id else job_ref, submit, start, end, wall, int(nnodes),
                         int(ncpus), state, a)
            except (ValueError, IndexError):
                if end is None:
                    running -= 1
                stats.bad(line)
                continue
            if " " in state or "+" in state:
                flat[-2] = state.split(" ", 1)[0].rstrip("+")  # "CANCELLED by 1000"
            n += 1
            if n == size:
                break
        else:
            exhausted = True
        stats.lines += seen
        stats.pending += pending
        stats.no_gpu += no_gpu
        stats.running += running
        stats.rows += n
        in_group += n
        if not in_group:  # the lines ran out (a chunk ends early only then), no run since the last group
            return
        group_end = exhausted or in_group >= group or monotonic() - group_start > group_seconds
        if group_end:
            in_group, group_start = 0, monotonic()
        chunk = RunChunk([flat[i::RUN_WIDTH] for i in range(RUN_WIDTH)], attrs, keys, sums_by, running, group_end)
        if n and cross_off:
            cols = chunk.cols
            cross_off.difference_update(
                (attrs[a].cluster, job_id, submit, start)
                for job_id, submit, start, a in zip(cols[0], cols[2], cols[3], cols[9], strict=True))
        yield chunk


# --- parsing in a forked process ---------------------------------------------------------------

_FORK_MIN_LINES = 100_000
_FORK_MIN_BYTES = 16 << 20
_PIPE_BYTES = 1 << 20  # room for a few chunks in flight
_CHUNK, _END, _ERROR = 0, 1, 2


def _fork_worthwhile(source: Iterable[str]) -> bool:
    if not sys.platform.startswith("linux"):  # elsewhere fork() is unsafe (macOS) or missing
        return False
    if isinstance(source, (list, tuple)):
        return len(source) >= _FORK_MIN_LINES
    if isinstance(source, io.IOBase):
        try:
            info = os.fstat(source.fileno())
        except (OSError, ValueError):  # no file descriptor (io.StringIO), closed
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size >= _FORK_MIN_BYTES
    return False


def _forked_chunks(
    lines: Iterator[str], resolve_model: ModelResolver, stats: ParseStats, size: int, group: int,
    group_seconds: float, cross_off: set[tuple[str, str, str, str]] | None,
) -> Iterator[RunChunk]:
    """:func:`_parse_chunks`, run by a child process (a fork: it has the lines and ``resolve_model``
    as they are here) that sends the chunks through a pipe. Its counts are added to ``stats`` and
    ``cross_off`` is brought up to date at the end. The child goes when the chunks are closed."""
    read_fd, write_fd = os.pipe()
    with suppress(OSError, AttributeError, ImportError):
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)  # Linux; elsewhere the default
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that a fork of a multi-threaded process may deadlock in the child; the
            # child here takes no lock another thread could hold (it parses, writes to its pipe, exits).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:  # no process to be had: parse here
        os.close(read_fd)
        os.close(write_fd)
        yield from _parse_chunks(lines, resolve_model, stats, size, group, group_seconds, cross_off)
        return
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _parser_child(write_fd, lines, resolve_model, size, group, group_seconds, cross_off)
    os.close(write_fd)
    finished = False
    try:
        with os.fdopen(read_fd, "rb", buffering=_PIPE_BYTES) as pipe:
            attrs: list[AttrSet] = []
            keys: list[RollupKey] = []
            sums_by: list[tuple[int, int]] = []
            while True:
                head = pipe.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else 0
                body = pipe.read(length) if length else b""
                if not length or len(body) != length:
                    raise OSError("the sacct parser process ended unexpectedly")
                message = marshal.loads(body)
                if message[0] == _CHUNK:
                    _, packed, new_table, new_attrs, new_sums_by, new_keys, running, group_end = message
                    if new_table:
                        attrs, keys, sums_by = [], [], []
                    attrs += map(AttrSet._make, new_attrs)
                    sums_by += new_sums_by
                    keys += map(RollupKey._make, new_keys)
                    yield RunChunk(_unpack_cols(packed), attrs, keys, sums_by, running, group_end)
                elif message[0] == _END:
                    finished = True
                    _, counts, first_bad, left = message
                    for name, value in zip(_COUNTS, counts, strict=True):
                        setattr(stats, name, getattr(stats, name) + value)
                    if stats.first_bad is None:
                        stats.first_bad = first_bad
                    if cross_off is not None and left is not None:
                        cross_off.intersection_update(map(tuple, left))
                    return
                else:
                    raise pickle.loads(message[1])
    finally:
        if not finished:
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with suppress(OSError):
            os.waitpid(pid, 0)


_COUNTS = ("lines", "malformed", "pending", "no_gpu", "running", "rows")


def _parser_child(
    fd: int, lines: Iterator[str], resolve_model: ModelResolver, size: int, group: int, group_seconds: float,
    cross_off: set[tuple[str, str, str, str]] | None,
) -> NoReturn:
    code = 0
    # A thread writes to the pipe, so that parsing goes on while the parent is busy (up to a bound).
    out: queue.Queue[bytes | None] = queue.Queue(maxsize=_CHILD_QUEUE)
    writer = threading.Thread(target=_write_out, args=(fd, out), daemon=True)
    writer.start()
    try:
        stats = ParseStats()
        table: list[AttrSet] | None = None
        sent_attrs = sent_keys = 0
        for chunk in _parse_chunks(lines, resolve_model, stats, size, group, group_seconds, cross_off):
            new_table = chunk.attrs is not table
            if new_table:
                table, sent_attrs, sent_keys = chunk.attrs, 0, 0
            out.put(_message(_CHUNK, _pack_cols(chunk.cols), new_table, [tuple(e) for e in chunk.attrs[sent_attrs:]],
                             chunk.sums_by[sent_attrs:], [tuple(k) for k in chunk.keys[sent_keys:]], chunk.running,
                             chunk.group_end))
            sent_attrs, sent_keys = len(chunk.attrs), len(chunk.keys)
        left = list(cross_off) if cross_off is not None else None
        out.put(_message(_END, tuple(getattr(stats, name) for name in _COUNTS), stats.first_bad, left))
    except BaseException as exc:  # the parent raises it
        code = 1
        with suppress(BaseException):
            try:
                data = pickle.dumps(exc)
            except Exception:
                data = pickle.dumps(RuntimeError(f"sacct parser: {type(exc).__name__}: {exc}"))
            out.put(_message(_ERROR, data))
    finally:
        with suppress(BaseException):
            out.put(None)
            writer.join()
        os._exit(code)


def _write_out(fd: int, out: queue.Queue[bytes | None]) -> None:
    try:
        while (data := out.get()) is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except OSError:  # the parent has gone (killed?): so does the child, now
        os._exit(1)


_CHILD_QUEUE = 64  # chunks ready for the pipe (some MB)


def _message(*message: Any) -> bytes:
    body = marshal.dumps(message, 2)  # version 2: no sharing of objects to track, the cheapest to write
    return len(body).to_bytes(8, "little") + body


# Columns go through the pipe as one string (text; ends: None as "") or one int64 array each, far
# cheaper to write and read than an object a value; job_ref (str or 0) as a list. A column that
# does not fit (a NUL in a text, an int past 64 bits) goes as a list too.
_TEXT_COLS = (0, 2, 3, 4, 8)
_INT_COLS = (5, 6, 7, 9)


def _pack_cols(cols: list[list[Any]]) -> list[Any]:
    n = len(cols[0])
    out: list[Any] = list(cols)
    for i in _TEXT_COLS:
        col = cols[i]
        text = "\0".join([value or "" for value in col] if i == 4 else col)
        if text.count("\0") == n - 1:
            out[i] = text
    for i in _INT_COLS:
        with suppress(OverflowError):
            out[i] = array("q", cols[i]).tobytes()
    return out


def _unpack_cols(packed: list[Any]) -> list[list[Any]]:
    cols = []
    for i, col in enumerate(packed):
        if col.__class__ is str:
            col = col.split("\0")
            if i == 4:
                col = [value or None for value in col]
        elif col.__class__ is bytes:
            ints = array("q")
            ints.frombytes(col)
            col = ints.tolist()
        cols.append(col)
    return cols
