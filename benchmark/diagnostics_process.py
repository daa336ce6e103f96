"""Representation diagnostics on a spare CPU core, while the run trains.

A sweep on the CPU often leaves a core idle: the quick suite trains one small CNN at a time
on one thread, and a diagnostics record costs about as much as one of its training steps. A
:class:`DiagnosticsProcess` is a spawned process that records them there. Each epoch the run
sends its student's weights (the digits CNNs' in ~0.1 ms) and trains on; the metrics come
back and go into the run's next batch of metrics at their epoch's step, and the run waits
only at its end, for its last epoch's, which the process records while the run scores its
test split. The process runs the same :class:`~.diagnostics.DiagnosticsRecorder` on a copy of
the student, so the values are those a recording in the run's own process gives. (Writing
the metrics from the process instead was no cheaper: its database writes slowed the run's
training on the other core by as much as they saved.)

Messages are pickled into bytes by :class:`ArrayPickler` (not by ``multiprocessing``'s
pickler, with which torch would move the live parameters' storage to shared memory). Each
run's messages carry a token, so the replies of a run that stopped early (pruned, failed) are
dropped, not read by the next one.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from otbench.errors import OtbenchError
from otbench.methods import LayerPair

from .diagnostics import DiagnosticsRecorder, MetricLog, save_arrays
from .plugins import load_plugins

try:
    import fcntl
except ImportError:  # Windows: pipes keep their size
    fcntl = None

#: The pipe's size asked for (Linux's default maximum for an unprivileged process).
PIPE_BYTES = 1 << 20
#: Seconds :meth:`DiagnosticsProcess.close` waits for the process to end before killing it.
CLOSE_TIMEOUT_S = 10.0


class DiagnosticsProcessError(OtbenchError):
    """The diagnostics process failed or stopped; the message says how and what to do."""


class DiagnosticsProcess:
    """One spawned process recording the diagnostics of one run at a time (a sweep worker's
    runs, one after the other). Started at once, so it has imported torch by the time the
    first run needs it; started again if it died."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.token = 0
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no forked torch, MLflow or SQLite
        inbox, self.outbox = context.Pipe(duplex=False)
        self.inbox, outbox = context.Pipe(duplex=False)
        widen(self.outbox)
        self.process = context.Process(target=serve, args=(inbox, outbox, self.threads),
                                       name="otbench-diagnostics", daemon=True)
        self.process.start()
        inbox.close()  # each side keeps only its own ends: either sees EOF if the other dies
        outbox.close()

    def recorder(self, teacher: nn.Module, student: nn.Module, pairs: Sequence[LayerPair],
                 probe: Tensor) -> BackgroundRecorder | DiagnosticsRecorder:
        """A recording of one run in this process, or in the run's own process when its
        models cannot be pickled (a warning says why)."""
        try:
            opening = dumps((teacher, student, list(pairs), probe))
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            warnings.warn(f"diagnostics recorded in the run's own process: its models cannot "
                          f"be sent to the diagnostics process ({type(err).__name__}: {err})",
                          RuntimeWarning, stacklevel=2)
            return DiagnosticsRecorder(teacher, student, pairs, probe)
        if not self.process.is_alive():
            self._start()
        self.token += 1
        return BackgroundRecorder(self, self.token, student, opening)

    def send(self, kind: str, token: int, payload: Any) -> None:
        try:
            self.outbox.send_bytes(dumps((kind, token, payload)))
        except OSError as err:  # BrokenPipeError: the process is gone
            raise self.stopped() from err

    def receive(self, token: int, wait: bool) -> list[tuple[str, Any]]:
        """The replies for ``token`` that have arrived (with ``wait``: at least one), those of
        earlier tokens dropped; an error reply is raised."""
        replies = []
        while (wait and not replies) or self.inbox.poll():
            try:
                kind, reply_token, payload = pickle.loads(self.inbox.recv_bytes())
            except EOFError as err:
                raise self.stopped() from err
            if reply_token != token:
                continue
            if kind == "error":
                raise DiagnosticsProcessError(
                    f"the diagnostics process failed:\n{payload}\nset background_diagnostics: "
                    "false in the suite to record them in the run's own process")
            replies.append((kind, payload))
        return replies

    def stopped(self) -> DiagnosticsProcessError:
        self.process.join(timeout=1.0)
        return DiagnosticsProcessError(
            f"the diagnostics process (pid {self.process.pid}) stopped (exit code "
            f"{self.process.exitcode}); the next run starts a new one. If it keeps stopping: a "
            "Python script that starts the sweep needs `if __name__ == \"__main__\":` (spawned "
            "processes import it), or memory ran out; background_diagnostics: false in the "
            "suite records them in the run's own process")

    def close(self) -> None:
        """Ask the process to end, and wait for it (kill it after CLOSE_TIMEOUT_S)."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # it is ending anyway
                self.outbox.send_bytes(pickle.dumps(None))
            self.process.join(CLOSE_TIMEOUT_S)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.outbox.close()
        self.inbox.close()

    def __enter__(self) -> DiagnosticsProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class BackgroundRecorder:
    """The run's side of a recording in a :class:`DiagnosticsProcess`: the interface of
    :class:`~.diagnostics.DiagnosticsRecorder` a run uses (``attach``, ``submit``,
    ``finish``, ``save``)."""

    def __init__(self, process: DiagnosticsProcess, token: int, student: nn.Module,
                 opening: bytes) -> None:
        self.process, self.token, self.student = process, token, student
        self.log: MetricLog | None = None
        self.finished = False
        self._arrays: dict[str, np.ndarray] | None = None
        process.send("open", token, opening)

    def attach(self, log: MetricLog) -> None:
        """Log the metrics that come back to ``log``, at their epoch's step."""
        self.log = log

    def submit(self, epoch: int) -> None:
        """Send this epoch's weights; log the metrics of the epochs recorded since."""
        self.process.send("record", self.token, (epoch, self.student.state_dict()))
        self._take(self.process.receive(self.token, wait=False))

    def finish(self) -> None:
        """No more epochs: the process records the last while the run scores its test split
        (:meth:`save` waits for it)."""
        self.process.send("finish", self.token, None)
        self.finished = True

    def save(self, path: Path) -> Path:
        """Wait for every epoch's metrics (logged) and the arrays, and save those."""
        if not self.finished:  # the process sends the arrays only once asked to finish
            raise RuntimeError("finish() the recording before saving it")
        while self._arrays is None:
            self._take(self.process.receive(self.token, wait=True))
        return save_arrays(self._arrays, path)

    def _take(self, replies: list[tuple[str, Any]]) -> None:
        for kind, payload in replies:
            if kind == "arrays":
                self._arrays = payload
            elif kind == "metrics" and self.log is not None:
                epoch, metrics = payload
                self.log.log_metrics(metrics, step=epoch)


class ArrayPickler(pickle.Pickler):
    """Pickles CPU tensors and parameters as NumPy arrays: ten times faster than torch's own
    reduction (a storage serialized through ``torch.save``), 0.1 ms for a digits CNN's
    weights. Other tensors (bfloat16, CUDA, subclasses) keep torch's."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) not in (Tensor, nn.Parameter) or obj.device.type != "cpu":
            return NotImplemented
        try:
            array = obj.detach().numpy()
        except TypeError:  # a dtype NumPy does not have
            return NotImplemented
        if type(obj) is nn.Parameter:
            return _parameter, (array, obj.requires_grad)
        return torch.from_numpy, (array,)


def _parameter(array: np.ndarray, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(array), requires_grad=requires_grad)


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    ArrayPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


class _Server:
    """The process's side: the recorder of the run being served."""

    def __init__(self) -> None:
        self.recorder: DiagnosticsRecorder | None = None

    def handle(self, kind: str, payload: Any) -> tuple[str, Any] | None:
        if kind == "open":
            self.recorder = None  # an earlier run's, stopped early
            teacher, student, pairs, probe = pickle.loads(payload)
            self.recorder = DiagnosticsRecorder(teacher, student, pairs, probe)
            return None
        if self.recorder is None:
            raise RuntimeError(f"{kind!r} before the run's recording was opened")
        if kind == "record":
            epoch, state = payload
            self.recorder.student.load_state_dict(state)
            return "metrics", (epoch, self.recorder.record(epoch))
        if kind == "finish":
            arrays, self.recorder = self.recorder.arrays(), None
            return "arrays", arrays
        raise ValueError(f"unknown message {kind!r}")


def serve(inbox: Connection, outbox: Connection, threads: int) -> None:
    """The process: handle messages until told to stop or the run's process is gone. An
    exception becomes an error reply for that run (the process serves the next one)."""
    # Ctrl-C reaches the whole process group: the run's process handles it and closes this
    # one (or this one sees the pipe close), without a second traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    load_plugins()  # models of a user's plugin must unpickle here too
    messages: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_read, args=(inbox, messages), daemon=True).start()
    server, failed = _Server(), None
    while (data := messages.get()) is not None and (message := pickle.loads(data)) is not None:
        kind, token, payload = message
        if kind == "open":
            failed = None
        if failed == token:
            continue  # its error was sent already
        try:
            reply = server.handle(kind, payload)
        except Exception:
            failed, reply = token, ("error", traceback.format_exc())
        if reply is not None:
            outbox.send_bytes(dumps((reply[0], token, reply[1])))
    # Nothing here needs finalizing, and the interpreter's own teardown with torch loaded takes
    # seconds (1.8 s measured) that the sweep, closing this process, would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _read(inbox: Connection, messages: queue.SimpleQueue[bytes | None]) -> None:
    """Take each message off the pipe as soon as it comes, so that the run, sending an epoch's
    weights, never waits for the record under way here; None once the run's process is gone."""
    while True:
        try:
            messages.put(inbox.recv_bytes())
        except EOFError:
            messages.put(None)
            return


def widen(connection: Connection) -> None:
    """Make a pipe hold one epoch's weights of a small model (Linux's 64 KiB holds a sixth of
    a digits CNN's), so that sending them never waits for the other side to read."""
    if fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the size
            fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def spare_cores(workers: int, threads: int) -> int:
    """Cores left over by ``workers`` local processes of ``threads`` torch threads each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores - workers * threads
