"""Evaluator processes: author code runs within a CPU and a memory budget, away from the API.

Scripts, conditions and expressions from uploaded diagrams and SOP templates are author
code. RestrictedPython's policy (:mod:`engine.sandbox`) keeps them from reaching the
system, and its guards bound loops and a few operators, but a single C-level call
(``pow(3, 3*10**7)``, ``'x'.ljust(2*10**9)``, ``sorted`` with a heavy key) neither
passes a checkpoint nor releases the GIL: run in the API process it freezes every
request. So each one runs in a small pool of pre-started evaluator processes:

- a child sets ``RLIMIT_AS`` (its start-up size + the memory budget; an allocation past it
  is a ``MemoryError``), ``RLIMIT_CORE`` = 0, and per request an ``ITIMER_PROF`` of the CPU
  budget (+0.2 s) whose ``SIGPROF`` ends the process whatever it is doing, with
  ``RLIMIT_CPU`` as a backstop; inside, RestrictedPython's policy and guards still apply;
- children run at a lower CPU priority (nice +10), so even a pool of spinning scripts
  leaves the API process its share of the CPU;
- the parent waits for the answer with ``poll`` (the GIL is free meanwhile) until a wall
  deadline (2 x CPU budget + 1 s), then kills the child; a killed or crashed child is
  replaced at once, so the pool stays full;
- data crosses as pickle over pipes, 8-byte length first. The child checks what it sends
  back (only data types, nested at most 100 deep, at most ``result_bytes`` as expanded —
  shared references count every time they are reached, as a serializer would meet
  them), and the parent unpickles with an allowlist of data classes only.

Errors come back by kind and are raised here as the sandbox's own exceptions
(:class:`~engine.sandbox.ScriptBudgetExceeded`, :class:`~engine.sandbox.ScriptRefused`,
:class:`~engine.sandbox.ScriptResultError`) or as the builtin exception the script
raised, at the script's line, so SpiffWorkflow names element and line as before.

The pool (``script_workers`` processes, default 2) starts on first use, is shared by all
threads of a process, is re-created after a fork, and is shut down at exit; a child also
exits when its stdin closes (the parent died).
"""
from __future__ import annotations

import atexit
import builtins
import contextlib
import io
import math
import os
import pickle
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from engine.config import Settings
from engine.config import load as load_settings
from engine.sandbox import ScriptBudgetExceeded, ScriptRefused, ScriptResultError

_HEADER = struct.Struct("!Q")
_MIB = 1024 * 1024
CPU_GRACE_SECONDS = 0.2  # the kill comes this long after the in-process loop check would have fired
STARTUP_SECONDS = 60.0  # a fresh child imports for ~0.3 s, much longer on a loaded machine
ACQUIRE_SECONDS = 60.0  # how long a request waits for a free evaluator before giving up
MAX_DEPTH = 100  # nesting of returned data (a list that contains itself is infinitely deep)


@dataclass(frozen=True)
class Limits:
    """Budgets for one evaluation: seconds of CPU, bytes of memory above the child's
    start-up size, loop steps, expanded bytes of returned data, bytes of rendered text."""

    cpu_seconds: float = 2.0
    memory_bytes: int = 256 * _MIB
    steps: int = 100_000
    result_bytes: int = 16 * _MIB
    output_bytes: int = 256 * 1024

    @property
    def wall_seconds(self) -> float:
        """The parent's deadline: CPU time is wall time only on an idle machine."""
        return self.cpu_seconds * 2 + 1.0


def limits_from(settings: Settings) -> Limits:
    return Limits(settings.script_max_seconds, settings.script_max_memory_mb * _MIB, settings.script_max_steps,
                  settings.script_max_result_bytes, settings.template_max_output_bytes)


_override: Limits | None = None


def limits() -> Limits:
    """The budgets in force: the settings', unless :func:`limited` changed them."""
    return _override or limits_from(load_settings())


@contextlib.contextmanager
def limited(**changes: Any) -> Iterator[Limits]:
    """Run a block with other budgets (tests and benchmarks), e.g. ``limited(cpu_seconds=0.5)``."""
    global _override
    previous = _override
    _override = replace(limits(), **changes)
    try:
        yield _override
    finally:
        _override = previous


# ---------------------------------------------------------------- what may cross

_SCALARS = (bool, int, float, str, bytes, type(None), Decimal, datetime, date, dtime, timedelta, UUID, complex, range)


def measure(value: Any, cap: int, what: str, used: int = 0) -> int:
    """``used`` plus the size ``value`` would take serialized (about JSON bytes).

    Shared references count every time they are reached, as a serializer meets them, but
    each container is walked once (its size is remembered), so a shared-reference bomb is
    measured in a few thousand steps. Raises :class:`ScriptBudgetExceeded` past ``cap`` and
    :class:`ScriptResultError` for anything that is not data, or nests deeper than
    :data:`MAX_DEPTH` (a list that contains itself).
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item: Any, depth: int) -> int:
        kind = type(item)
        if kind is str or kind is bytes:
            return len(item) + 2
        if kind is int:
            return int(item.bit_length() // 3 + 1)
        if kind in (list, tuple, set, frozenset, dict):
            key = id(item)
            known = sizes.get(key)
            if known is not None:
                return known
            if depth >= MAX_DEPTH or key in active:
                raise ScriptResultError(f"{what} is nested more than {MAX_DEPTH} levels deep (or contains itself)")
            active.add(key)
            total = 2 + 2 * len(item)
            for part in ((*item.keys(), *item.values()) if kind is dict else item):
                total += size(part, depth + 1)
                if total > cap:
                    raise _TooLarge
            active.discard(key)
            sizes[key] = total
            return total
        if isinstance(item, _SCALARS):
            return 16
        raise ScriptResultError(f"{what} holds a value of type {kind.__name__}, which is not data a process can store")

    try:
        total = used + size(value, 0)
    except _TooLarge:
        total = cap + 1
    if total > cap:
        raise ScriptBudgetExceeded(f"{what} is larger than the {cap // 1024} KiB a script may leave "
                                   "(shared references count once per use)")
    return total


class _TooLarge(Exception):
    pass


_SAFE_GLOBALS = {
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("uuid", "UUID"), ("uuid", "SafeUUID"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "range"),
    ("zoneinfo", "ZoneInfo._unpickle"), ("copyreg", "_reconstructor"), ("builtins", "object"),
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles data only: what a child sends can name no other class or function."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"an evaluator sent {module}.{name}, which is not data")
        return super().find_class(module, name)


def _loads_reply(data: bytes) -> Any:
    return _DataUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------- the parent side


class EvaluatorUnavailable(RuntimeError):
    """No evaluator process could be started or reached (the server's problem, not the diagram's)."""


_ROOT = str(Path(__file__).resolve().parent.parent)
NICENESS = 10  # evaluators yield the CPU to the API process: a spinning script cannot starve requests
_ARGV = [sys.executable, "-I", "-c",
         f"import os; os.nice({NICENESS}); import sys; sys.path.insert(0, {_ROOT!r}); "
         "from engine.evaluator import serve; serve()"]


class _Worker:
    """One evaluator process and its two pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                                     bufsize=0, close_fds=True, start_new_session=True)
        self.ready = False
        self.killed = False

    def send(self, data: bytes) -> None:
        if self.proc.stdin is None:
            raise BrokenPipeError
        view = memoryview(_HEADER.pack(len(data)) + data)
        fd = self.proc.stdin.fileno()
        while view:
            view = view[os.write(fd, view):]

    def _read(self, size: int, deadline: float) -> bytes | None:
        """``size`` bytes, or None at the deadline; EOFError if the child went away."""
        if self.proc.stdout is None:
            raise EOFError
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks: list[bytes] = []
        got = 0
        while got < size:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(fd, min(size - got, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def receive(self, deadline: float, max_bytes: int) -> bytes | None:
        header = self._read(_HEADER.size, deadline)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size > max_bytes:
            raise ScriptBudgetExceeded(f"the answer is larger than {max_bytes // _MIB} MiB")
        return self._read(size, deadline)

    def stop(self, kill: bool) -> int:
        """End the process (at once if ``kill``, else by closing its stdin) and reap it."""
        if kill:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Pool:
    """A fixed number of evaluator processes shared by the threads of one process."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = max(1, size)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker()
        with self._lock:
            self._workers.add(worker)
        return worker

    def _replace(self, worker: _Worker, *, kill: bool) -> int:
        code = worker.stop(kill)
        with self._lock:
            self._workers.discard(worker)
            closed = self._closed
        if not closed:
            self._idle.put(self._spawn())
        return code

    def processes(self) -> list[int]:
        """Process ids of the current evaluator processes."""
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop(kill=False)

    def call(self, op: str, payload: Any, lim: Limits) -> Any:
        """Run one request in a free evaluator; the answer's value, or its error raised here."""
        from engine import clock

        try:
            request = pickle.dumps((op, payload, lim, clock.now()), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise ScriptResultError(f"the task data cannot be handed to the sandbox: {exc}") from None
        for attempt in range(2):
            try:
                worker = self._idle.get(timeout=ACQUIRE_SECONDS)
            except queue.Empty:
                raise ScriptBudgetExceeded(
                    f"all {self.size} script evaluators stayed busy for {ACQUIRE_SECONDS:g} s") from None
            try:
                self._ready(worker)
                worker.send(request)
            except (BrokenPipeError, EOFError, EvaluatorUnavailable):
                self._replace(worker, kill=True)  # died while idle: nothing ran, try a fresh one
                if attempt:
                    raise EvaluatorUnavailable("the script evaluator process could not be reached") from None
                continue
            return self._answer(worker, lim)
        raise AssertionError("unreachable")

    def _ready(self, worker: _Worker) -> None:
        if worker.ready:
            return
        frame = worker.receive(time.monotonic() + STARTUP_SECONDS, _MIB)
        if frame is None or _loads_reply(frame)[0] != "ready":
            raise EvaluatorUnavailable("the script evaluator process did not start")
        worker.ready = True

    def _answer(self, worker: _Worker, lim: Limits) -> Any:
        deadline = time.monotonic() + lim.wall_seconds
        try:
            frame = worker.receive(deadline, lim.result_bytes * 4 + _MIB)
        except EOFError:
            code = self._replace(worker, kill=False)
            raise _death(code, lim) from None
        except BaseException:  # an oversized answer, or the caller interrupted: this child is spent
            self._replace(worker, kill=True)
            raise
        if frame is None:
            self._replace(worker, kill=True)
            raise ScriptBudgetExceeded(
                f"did not finish within {lim.wall_seconds:g} s (CPU budget {lim.cpu_seconds:g} s); stopped")
        try:
            reply = _loads_reply(frame)
        except Exception as exc:  # noqa: BLE001 - a child that sends anything else is not trusted again
            self._replace(worker, kill=True)
            raise ScriptResultError(f"the evaluator sent something that is not data: {exc}") from None
        if reply[-1]:  # the child asked to be retired (memory grew, or it hit the memory limit)
            self._replace(worker, kill=False)
        else:
            self._idle.put(worker)
        if reply[0] == "ok":
            return reply[1]
        _, kind, name, args, line, _retire = reply
        raise _rebuild(kind, name, args, line)


def _death(code: int, lim: Limits) -> Exception:
    if code in (-signal.SIGPROF, -signal.SIGXCPU):
        return ScriptBudgetExceeded(f"exceeded its CPU time budget ({lim.cpu_seconds:g} s); stopped")
    if code == -signal.SIGKILL:
        return ScriptBudgetExceeded(f"exceeded its memory budget ({lim.memory_bytes // _MIB} MiB); stopped")
    return EvaluatorUnavailable(f"the script evaluator process ended unexpectedly (exit status {code})")


def _rebuild(kind: str, name: str, args: tuple[Any, ...], line: int | None) -> Exception:
    message = str(args[0]) if args else name
    if kind == "refused":
        return ScriptRefused(message, line)
    if kind == "budget":
        return ScriptBudgetExceeded(message)
    if kind == "result":
        return ScriptResultError(message)
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (OSError, UnicodeError)):
        try:
            exc: Exception = cls(*args)
        except Exception:  # noqa: BLE001 - a builtin that wants other arguments
            exc = cls(message)
    else:
        exc = ScriptFailed(f"{name}: {message}")
    if line:
        try:  # raise it once from a frame at the script's line: SpiffWorkflow reads the line from '<string>'
            exec(compile("\n" * (line - 1) + "raise _exc_", "<string>", "exec"), {"_exc_": exc})  # noqa: S102
        except Exception as raised:  # noqa: BLE001
            return raised
    return exc


class ScriptFailed(Exception):
    """A script raised an exception that is not a builtin one (``decimal.InvalidOperation``, ...)."""


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> Pool:
    """This process's pool, started on first use (and again in a forked child)."""
    global _POOL
    current = _POOL
    if current is not None and current.pid == os.getpid():
        return current
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = Pool(load_settings().script_workers)
        return _POOL


def shutdown() -> None:
    """Stop this process's evaluator processes (at exit; a later call starts a new pool)."""
    global _POOL
    with _POOL_LOCK:
        current, _POOL = _POOL, None
    if current is not None and current.pid == os.getpid():
        current.close()


atexit.register(shutdown)


def evaluate(expression: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> Any:
    """The value of ``expression`` against ``context`` (+ external names), evaluated in the pool."""
    return pool().call("eval", (expression, context, external_context or {}), limits())


def execute(script: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> None:
    """Run ``script`` in the pool and apply what it left to ``context`` in place (deletions too)."""
    result: dict[str, Any] = pool().call("exec", (script, context, external_context or {}), limits())
    for key in [k for k in context if k not in result]:
        del context[key]
    context.update(result)


def render(text: str, variables: dict[str, Any]) -> str:
    """``text`` rendered as a bounded jinja2 template (:mod:`engine.templates`) in the pool."""
    rendered: str = pool().call("render", (text, variables), limits())
    return rendered


def check_template(text: str) -> tuple[str, int | None] | None:
    """What is wrong with template ``text`` (message, 1-based line) or None; compiled in the pool."""
    problem: tuple[str, int | None] | None = pool().call("check_template", text, limits())
    return problem


# ---------------------------------------------------------------- the child side


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: no memory budget, only the CPU budget and the guards


def _script_line(tb: Any) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<string>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _plain(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return args if all(isinstance(a, (str, int, float, bool, type(None))) for a in args) else (str(args),)


class _Child:
    def __init__(self) -> None:
        from engine import sandbox, templates

        self.sandbox, self.templates = sandbox, templates
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        self.as_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        self.cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        # warm up what every request uses, so the baseline includes it
        sandbox.run_exec("x = [i for i in range(3)]", {})
        templates.render_bounded("{% for i in range(2) %}{{ i }}{% endfor %}", {}, 1024)
        self.baseline = _address_space()
        self.memory_set: int | None = None

    def _limit(self, lim: Limits) -> None:
        if self.baseline is not None and self.memory_set != lim.memory_bytes:
            soft = self.baseline + lim.memory_bytes
            if self.as_hard != resource.RLIM_INFINITY:
                soft = min(soft, self.as_hard)
            resource.setrlimit(resource.RLIMIT_AS, (soft, self.as_hard))
            self.memory_set = lim.memory_bytes
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = math.ceil(usage.ru_utime + usage.ru_stime + lim.cpu_seconds) + 2
        if self.cpu_hard != resource.RLIM_INFINITY:
            cpu = min(cpu, self.cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, self.cpu_hard))
        signal.setitimer(signal.ITIMER_PROF, lim.cpu_seconds + CPU_GRACE_SECONDS)

    def _run(self, op: str, payload: Any, lim: Limits) -> Any:
        sandbox = self.sandbox
        run = sandbox._Run(lim.steps, lim.cpu_seconds, time.process_time)
        if op == "exec":
            script, context, external = payload
            sandbox.run_exec(script, context, external, run=run)
            used = 0
            for key, value in context.items():
                used = measure(value, lim.result_bytes, f"variable '{key}'", used)
            return context
        if op == "eval":
            expression, context, external = payload
            value = sandbox.run_eval(expression, context, external, run=run)
            measure(value, lim.result_bytes, "the expression's value")
            return value
        if op == "render":
            text, variables = payload
            return self.templates.render_bounded(text, variables, lim.output_bytes)
        if op == "check_template":
            return self.templates.check_bounded(payload, lim.output_bytes)
        raise ValueError(f"unknown evaluator request {op!r}")

    def handle(self, frame: bytes) -> tuple[bytes, bool]:
        retire = False
        op, lim = "", Limits()
        try:
            op, payload, lim, now = pickle.loads(frame)  # noqa: S301 - from our own parent
            self._limit(lim)
            self.sandbox._state.now = now
            result = self._run(op, payload, lim)
            data = pickle.dumps(("ok", result, False), protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            retire = True
            data = self._error("budget", "MemoryError",
                               (f"exceeded its memory budget ({lim.memory_bytes // _MIB} MiB)",), None, True)
        except RecursionError as exc:
            retire = True  # a deep C stack is best not reused
            kind = "budget" if op in ("render", "check_template") else "script"
            message = "recursed too deeply" if kind == "budget" else str(exc)
            data = self._error(kind, "RecursionError", (message,), _script_line(exc.__traceback__), True)
        except self.sandbox.ScriptRefused as exc:
            data = self._error("refused", "ScriptRefused", (str(exc),), exc.line, False)
        except ScriptBudgetExceeded as exc:
            data = self._error("budget", "ScriptBudgetExceeded", (str(exc),), None, False)
        except ScriptResultError as exc:
            data = self._error("result", "ScriptResultError", (str(exc),), None, False)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if "pickle" not in str(exc).lower():
                data = self._error("script", type(exc).__name__, _plain(exc.args), _script_line(exc.__traceback__),
                                   False)
            else:
                data = self._error("result", "ScriptResultError", (f"the result is not storable data: {exc}",),
                                   None, False)
        except Exception as exc:  # noqa: BLE001 - the script's own error, sent back by name
            data = self._error("script", type(exc).__name__, _plain(exc.args), _script_line(exc.__traceback__),
                               False)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            self.sandbox._state.now = None
        grown = self.baseline is not None and (_address_space() or 0) > self.baseline + (lim.memory_bytes // 2)
        return data, retire or grown

    @staticmethod
    def _error(kind: str, name: str, args: tuple[Any, ...], line: int | None, retire: bool) -> bytes:
        return pickle.dumps(("error", kind, name, args, line, retire), protocol=pickle.HIGHEST_PROTOCOL)


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def serve() -> None:
    """An evaluator process's main loop: answer framed requests on stdin until it closes."""
    out = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answers
    child = _Child()
    with contextlib.suppress(OSError):  # the parent may be gone already (shut down while we started)
        _serve_requests(child, out)


def _serve_requests(child: _Child, out: int) -> None:
    _write_frame(out, pickle.dumps(("ready", os.getpid(), False)))
    while True:
        header = _read_exact(0, _HEADER.size)
        if header is None:
            return
        frame = _read_exact(0, _HEADER.unpack(header)[0])
        if frame is None:
            return
        data, retire = child.handle(frame)
        if retire:  # tell the parent in the frame's last field
            reply = pickle.loads(data)  # noqa: S301 - our own frame
            data = pickle.dumps((*reply[:-1], True), protocol=pickle.HIGHEST_PROTOCOL)
        _write_frame(out, data)
        if retire:
            return


__all__ = ["EvaluatorUnavailable", "Limits", "Pool", "ScriptFailed", "check_template", "evaluate", "execute",
           "limited", "limits", "measure", "pool", "render", "serve", "shutdown"]
