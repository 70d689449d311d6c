"""The progress reporter (issue 27): plain log lines with the count, rate, ETA and the
share of time spent waiting for input, at most one per `every_s` seconds."""

import logging

import pytest

from cct_jax import progress, writers


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def lines(caplog):
  caplog.set_level(logging.INFO)
  return lambda: [r.getMessage() for r in caplog.records if r.name == 'absl']


def test_lines_show_count_rate_eta_and_input_wait_at_most_every_interval(lines):
  clock = FakeClock()
  reporter = progress.Reporter(100, unit='images', what='val evaluation', every_s=10.0,
                               clock=clock)
  clock.now += 5
  reporter.update(10, waited_s=1.0)
  assert lines() == []  # 5 s: too soon
  clock.now += 5
  reporter.update(10, waited_s=2.0)
  assert lines() == ['val evaluation: 20/100 images (20%) | 2 images/s | ETA 0:00:40 | '
                     'input wait 30%']
  clock.now += 40  # the rate and wait share are of the time since the last line
  reporter.update(40, waited_s=30.0)
  assert lines()[-1] == ('val evaluation: 60/100 images (60%) | 1 images/s | ETA 0:00:40 | '
                         'input wait 75%')
  clock.now += 50
  reporter.update(40)
  assert len(lines()) == 2  # the total reached: the closing line is done()'s
  reporter.done()
  assert lines()[-1] == ('val evaluation: 100/100 images in 0:01:40 | 1 images/s | '
                         'input wait 33%')
  assert not any('\r' in line or '\n' in line for line in lines())


def test_steps_add_the_image_rate_and_a_resumed_run_rates_its_own_work(lines):
  clock = FakeClock()
  reporter = progress.Reporter(1200, done=600, images_per_unit=16, every_s=0.0, clock=clock)
  clock.now += 200
  reporter.update(100, note='loss=0.5000')
  # No wait reported: no wait share. 500 steps left at 0.5 steps/s.
  assert lines() == ['700/1200 steps (58%) | 0.5 steps/s, 8 img/s | ETA 0:16:40 | loss=0.5000']
  clock.now += 3600
  reporter.update(0)
  assert lines()[-1].endswith('| 0 steps/s, 0 img/s | ETA ?')


def test_training_line_carries_losses_and_the_input_wait_share(tmp_path, lines):
  writer = writers.MetricWriter(str(tmp_path))
  writer.start(2, 4, images_per_step=16, what='classifier training')
  writer.add_input_wait(0.0)
  writer.write_scalars([(3, {'loss': 0.25}), (4, {'loss': 0.125, 'lr': 0.1})])
  writer.close()
  closing = lines()[-1]
  assert closing.startswith('classifier training: 4/4 steps in 0:00:00 | ')
  assert closing.endswith('| input wait 0% | loss=0.1250')


def test_timed_gives_each_item_with_the_time_spent_waiting_for_it(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)

  def slow_source():
    yield 'a'
    clock.now += 3.0  # reading the next item takes 3 s
    yield 'b'

  assert list(progress.timed(slow_source())) == [('a', 0.0), ('b', 3.0)]
