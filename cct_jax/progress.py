"""Progress of a long loop (training, evaluation, prediction, pseudo-labels) as log lines.

One plain line at most every `every_s` seconds through absl logging: no bar and no
carriage return, so it reads the same in a terminal, a Slurm output file and a TPU VM's
console log. It says how far the loop is, its rate and ETA over the time since the last
line, and, when the caller reports how long it waited for its input, the share of that
time spent waiting (an input-bound run otherwise looks like a slow model):

  reporter = progress.Reporter(len(dataset), unit='images', what='val evaluation')
  for batch, waited in progress.timed(batches):  # or progress.timed_next(iterator)
    ...
    reporter.update(len(batch['image']), waited_s=waited)
  reporter.done()

  val evaluation: 120/500 images (24%) | 35.2 images/s | ETA 0:00:11 | input wait 12%
  val evaluation: 500/500 images in 0:00:14 | 35.7 images/s | input wait 10%

Every report, logged or not, is also progress for the watchdog (watchdog.py).
"""

from collections.abc import Callable, Iterable, Iterator
import time
from typing import TypeVar

from absl import logging

from cct_jax import watchdog

T = TypeVar('T')


def duration(seconds: float) -> str:
  """H:MM:SS."""
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def timed_next(iterator: Iterator[T]) -> tuple[T, float]:
  """The iterator's next item and the seconds spent waiting for it."""
  start = time.perf_counter()
  item = next(iterator)
  return item, time.perf_counter() - start


def timed(iterable: Iterable[T]) -> Iterator[tuple[T, float]]:
  """Each item of `iterable` with the seconds spent waiting for it."""
  iterator = iter(iterable)
  while True:
    try:
      yield timed_next(iterator)
    except StopIteration:
      return


class Reporter:
  """Counts `unit`s of `what` towards `total` and logs a line at most every `every_s`.

  `done` counts what an earlier, resumed run finished: the rate is of this run's work.
  `images_per_unit` adds the image rate to a line of steps. `log=False` only counts (for
  the watchdog: training's progress on processes other than 0, which log nothing). `clock`
  is for tests.
  """

  def __init__(self, total: int, unit: str = 'steps', what: str = '', *, done: int = 0,
               every_s: float = 15.0, images_per_unit: float = 0.0, log: bool = True,
               clock: Callable[[], float] = time.perf_counter):
    self.total, self.unit, self.what = total, unit, what
    self.count = done
    self.every_s, self.images_per_unit, self._clock = every_s, images_per_unit, clock
    self._start = self._window_start = clock()
    self._start_count = self._window_count = done
    self._waited = self._window_waited = 0.0
    self._measures_wait = False
    self._log = log
    watchdog.kick(self)

  def update(self, n: int = 1, waited_s: float | None = None, note: str = '') -> None:
    """`n` more units done, `waited_s` of which spent waiting for input (None: not
    measured); `note` ends the line (say, the losses). Silent once the total is reached:
    `done` closes."""
    self.count += n
    watchdog.kick(self)
    if waited_s is not None:
      self._measures_wait = True
      self._waited += waited_s
      self._window_waited += waited_s
    now = self._clock()
    if (not self._log or now - self._window_start < self.every_s
        or self.count >= self.total):
      return  # the last line is done()'s
    seconds = now - self._window_start
    rate = (self.count - self._window_count) / seconds
    eta = f'ETA {duration((self.total - self.count) / rate)}' if rate > 0 else 'ETA ?'
    logging.info('%s', self._line(f'{self.count}/{self.total} {self.unit} '
                                  f'({100 * self.count / max(self.total, 1):.0f}%)', rate,
                                  eta, self._window_waited / seconds, note))
    self._window_start, self._window_count, self._window_waited = now, self.count, 0.0

  def done(self, note: str = '') -> None:
    """The closing line: this run's count, time, rate and input wait."""
    watchdog.kick(self)
    if not self._log:
      return
    seconds = max(self._clock() - self._start, 1e-9)
    logging.info('%s', self._line(f'{self.count}/{self.total} {self.unit} in '
                                  f'{duration(seconds)}',
                                  (self.count - self._start_count) / seconds, '',
                                  self._waited / seconds, note))

  def _line(self, position: str, rate: float, eta: str, wait_share: float,
            note: str) -> str:
    rates = f'{rate:.3g} {self.unit}/s'
    if self.images_per_unit:
      rates += f', {rate * self.images_per_unit:.3g} img/s'
    parts = [f'{self.what}: {position}' if self.what else position, rates, eta,
             f'input wait {100 * wait_share:.0f}%' if self._measures_wait else '', note]
    return ' | '.join(part for part in parts if part)
