"""`python -m cct_jax.main FLAGS` whose training stalls for ever at its first step, before
compiling it (a short `train.hang_timeout_s` would end a compile too), for
tests/test_hang_and_loss.py: only the watchdog can end it."""

import threading

from absl import app

from cct_jax import main, train


def stalled_train_one(trainer, state, step):
  del trainer, state, step
  threading.Event().wait()  # for ever, without the GIL, as a hung collective waits


if __name__ == '__main__':
  train.SingleDomainTrainer.train_one = stalled_train_one
  app.run(main.main)
