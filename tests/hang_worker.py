"""`python -m cct_jax.main FLAGS` whose training stalls for ever before it compiles
anything (where it creates the train state), for tests/test_hang_and_loss.py: only the
watchdog can end it. Stalling later would make a short `train.hang_timeout_s` race the
compiles before it on a busy machine."""

import threading

from absl import app

from cct_jax import main, segmentation


def stalled_create_state(task, num_steps, starting_weights=True):
  del task, num_steps, starting_weights
  threading.Event().wait()  # for ever, without the GIL, as a hung collective waits


if __name__ == '__main__':
  segmentation.Segmentation.create_state = stalled_create_state
  app.run(main.main)
