"""A hang is reported, not waited out.

A run that stops making progress (a collective waiting for a process that hangs, a device
or filesystem that never answers) would otherwise hold its machines until a scheduler's
time limit, silently. Once armed (main.py, around the work of --mode), the watchdog
expects progress: every `progress.Reporter` of the run (training's steps, evaluation,
prediction, pseudo-labels) kicks it when it is created, updated and done. When nothing
progresses for `timeout_s`, it writes every thread's Python stack and one 'error:' line
naming what stalled to stderr, and ends the process with a non-zero status: the main thread
is then blocked in C++, where no exception and no SIGTERM reaches it, so `os._exit`.

SIGTERM / SIGINT ask the training loop to save and return (loop.StopRequest), but the
handler that records the request runs only once the main thread is back in Python: a
hung process ignores it. The watchdog hears these signals itself (signal.set_wakeup_fd,
written from C at once), and from then on a step must follow within `stop_grace_s`, so
that Slurm's and the TPU script's stop paths end a hung process too.

A process of a multi-process run that dies is reported by the others as soon as jax lets
them see it (`exit_if_process_lost`; parallel.initialize_distributed has the limits).
"""

import contextlib
import faulthandler
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

import jax

# After SIGTERM / SIGINT the stop takes a step, the collective that agrees on it and a save:
# seconds on an accelerator, well within Slurm's default --grace-seconds (300,
# launch/slurm_gpu.sh), which must leave time for a requeue after it.
STOP_GRACE_S = 120.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# sysexits' EX_TEMPFAIL ("try again later"): unlike a Python error's 1, it tells a launcher
# that running the same command again resumes (launch/slurm_gpu.sh requeues on it).
EXIT_STATUS = 75


class Watchdog:
  """A daemon thread that reports and calls `exit_process(EXIT_STATUS)` after `timeout_s`
  without a kick (`stop_grace_s` once SIGTERM or SIGINT came). `resume` ends the error
  line: how the work goes on after it. Create and close it in the main thread (it takes
  the signal wakeup fd); `exit_process` and `clock` are for tests."""

  def __init__(self, timeout_s: float, *, stop_grace_s: float, resume: str,
               exit_process: Callable[[int], None] = os._exit,
               clock: Callable[[], float] = time.monotonic):
    self.timeout_s, self.stop_grace_s, self.resume = timeout_s, stop_grace_s, resume
    self._exit_process, self._clock = exit_process, clock
    # Written by the main thread, each with one assignment, and read by the watchdog's.
    self._last_kick = clock()
    self._source = None  # the Reporter that last progressed
    self._closed = False
    self._stopped_at = self._stop_signal = None  # the watchdog's own
    # Python writes the number of each signal it catches here (a byte 0 wakes the thread).
    self._wake_read, self._wake_write = os.pipe()
    os.set_blocking(self._wake_write, False)
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_write,
                                                    warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, name='watchdog', daemon=True)
    self._thread.start()

  def kick(self, source=None) -> None:
    """Progress: the clock starts again. `source`, the `progress.Reporter` that progressed,
    is what the error names (None: the last one)."""
    if source is not None:
      self._source = source
    self._last_kick = self._clock()

  def close(self) -> None:
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    self._closed = True
    os.write(self._wake_write, b'\0')
    self._thread.join()
    os.close(self._wake_read)
    os.close(self._wake_write)

  def _deadline(self) -> float:
    if self._stopped_at is None:
      return self._last_kick + self.timeout_s
    return max(self._last_kick, self._stopped_at) + self.stop_grace_s

  def _watch(self) -> None:
    while not self._closed:
      remaining = self._deadline() - self._clock()
      if remaining <= 0:
        self._report()
        self._exit_process(EXIT_STATUS)
        return
      if select.select([self._wake_read], [], [], remaining)[0]:
        caught = [signum for signum in os.read(self._wake_read, 256) if signum in STOP_SIGNALS]
        if caught and self._stopped_at is None:
          self._stop_signal = signal.Signals(caught[0]).name
          self._stopped_at = self._clock()

  def _report(self) -> None:
    waited = self._clock() - self._last_kick
    source = self._source
    if source is None:
      where = 'before any progress was reported'
    else:
      what, position = source.what or source.unit, f'{source.count}/{source.total} {source.unit}'
      where = (f'after {what} finished ({position})' if source.count >= source.total
               else f'in {what} at {position}')
    limit = (f'{self._stop_signal} asked the run to stop, grace {self.stop_grace_s:g} s'
             if self._stop_signal
             else f'train.hang_timeout_s={self.timeout_s:g}')
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.write(f'error: no progress for {waited:.0f} s ({limit}): stalled {where}; '
                     f"every thread's stack is above. The process exits (status {EXIT_STATUS}) "
                     f'so that {self.resume}\n')
    sys.stderr.flush()


_armed: Watchdog | None = None  # the process's one watchdog, which kick() reaches


@contextlib.contextmanager
def armed(timeout_s: float, resume: str):
  """A watchdog for the body, when `timeout_s` > 0; see `Watchdog`."""
  global _armed
  if timeout_s <= 0:
    yield None
    return
  if _armed is not None:
    raise RuntimeError('a watchdog is already armed')
  _armed = Watchdog(timeout_s, stop_grace_s=min(timeout_s, STOP_GRACE_S), resume=resume)
  try:
    yield _armed
  finally:
    _armed.close()
    _armed = None


def kick(source=None) -> None:
  """Progress of `source` (a `progress.Reporter`; None: the last one), if a watchdog is
  armed."""
  watchdog = _armed
  if watchdog is not None:
    watchdog.kick(source)


def exit_if_process_lost(error: Exception, resume: str) -> None:
  """Ends the process with one 'error:' line when `error`, raised by a computation of a
  multi-process run, says that another process went away; returns otherwise.

  On CPU, gloo fails an all-gather (orbax's barriers, the stop agreement) at once when a
  peer's connection closes, naming the peer's address only. A train step waiting in its
  all-reduce was seen to wait instead, as NCCL and TPUs do: then jax's heartbeat check, or
  the coordinator's loss, aborts every process from C++ (naming the lost task), and Python
  gets no word in (jax 0.12.1 offers no hook: jaxlib's missed_heartbeat_callback, which
  jax.distributed.initialize does not pass, ends the process with std::bad_cast when it
  fires). jax's exit handler would first wait for the lost process in its shutdown barrier,
  then abort the same way, burying this line: hence `os._exit`.
  """
  # A peer's closed or reset connection is a process gone; a gloo timeout is not (it says
  # nothing of which process is late, or why).
  if jax.process_count() == 1 or not re.search(r'Gloo.*(closed|reset) by peer', str(error)):
    return
  me, count = jax.process_index(), jax.process_count()
  lost = f'process {1 - me} of 2 is' if count == 2 else f'one of the {count} processes is'
  detail = str(error).splitlines()[0]
  sys.stderr.flush()
  sys.stderr.write(f'error: {lost} gone (a collective of process {me} failed: {detail}); '
                   f'this process exits (status {EXIT_STATUS}) so that {resume}\n')
  sys.stderr.flush()
  os._exit(EXIT_STATUS)
