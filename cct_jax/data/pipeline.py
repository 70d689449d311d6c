"""grain pipelines: the paired training streams, and a data config's streams and evaluation
batches (`make_train_streams`, `make_eval_dataset`; the batches' layout: eval_batches.py).

Training (a labelled and an unlabelled batch per iteration, paper App. C, Algorithm 1):
a labelled and an unlabelled stream, each shuffled and repeated with its own seed,
augmented, sliced per process and batched. The labelled set is reshuffled and re-augmented
every time it is exhausted, or, with `data.labelled_replay`, as the authors' trainer's
`zip(cycle(labelled), unlabelled)`: each epoch (a pass over the unlabelled set) takes one
fresh labelled pass and replays its batches, the same images in the same crops, until the
epoch ends. Augmentation happens before the per-process slice, so element k of the global
stream, and its random crop, do not depend on the number of processes; at step t process
p takes the global elements [t * B + p * B / P, t * B + (p + 1) * B / P), so the P local
batches, joined in process order, are exactly global elements [t * B, (t + 1) * B) in
order (the global array of P processes is the one a single process makes: identical
steps). Batching is one-to-one in the
random-access stage, so worker processes only decide who computes which batch: the
output is the same for 0 and N workers.

Resuming, two ways, both exact: the iterators are grain `DatasetIterator`s whose
`get_state()` / `set_state()` state is small and JSON-able (orbax saves it with
`grain.checkpoint.CheckpointSave(iterator)`), valid for the same number of workers; or,
since batch k is a pure function of k, rebuild the streams at `start_step` = the restored
step, valid for any number of workers and processes.
"""

import dataclasses
import functools
import os
import sys
from collections.abc import Callable

import grain
import numpy as np

from cct_jax import errors
from cct_jax.data import eval_batches, factory, weak
from cct_jax.data.factory import AUTO


def per_process_batch_size(global_batch: int, *, device_count: int,
                           process_count: int = 1, name: str = 'batch size') -> int:
  """The batch each process loads; the global batch must split evenly over devices."""
  if global_batch <= 0 or global_batch % device_count:
    raise errors.UserError(
        f'{name} {global_batch} does not divide over {device_count} devices: every device '
        f'needs the same number of examples. Use a multiple of {device_count}, e.g. '
        f'{max(device_count, global_batch // device_count * device_count)}.')
  if device_count % process_count:
    raise errors.UserError(f'{device_count} devices do not divide over {process_count} processes')
  return global_batch // process_count


def stream_seed(seed: int, stream: int) -> int:
  """Independent seeds for the streams of one run (0: labelled, 1: unlabelled)."""
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


class _Reindexed(grain.MapDataset):
  """`parent` read in another order, endlessly: element i is `parent[index_of(i)]`."""

  def __init__(self, parent: grain.MapDataset, index_of: Callable[[int], int]):
    super().__init__(parent)
    self._index_of = index_of

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self.parents[0][self._index_of(index)]


def _cycle_element(index: int, *, pass_length: int, cycle_length: int) -> int:
  """Element `index` of the labelled cycles -> the shuffled, repeated source: cycle c is
  its pass c, which fills the cycle's last batch from the pass's start."""
  cycle, position = divmod(index, cycle_length)
  return cycle * pass_length + position % pass_length


def _replayed_element(index: int, *, global_batch: int, cycle_steps: int,
                      epoch_steps: int) -> int:
  """Element `index` of the replayed stream -> the cycles: epoch e's step t is step
  t mod `cycle_steps` of cycle e."""
  step, position = divmod(index, global_batch)
  epoch, step_in_epoch = divmod(step, epoch_steps)
  return (epoch * cycle_steps + step_in_epoch % cycle_steps) * global_batch + position


def train_dataset(source, transform: Callable, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  start_step: int = 0, epoch_steps: int = 0) -> grain.MapDataset:
  """An endless, shuffled, augmented stream of this process's batches of `source`.

  `transform(example, rng)` gets a numpy Generator seeded from `seed` and the element's
  global position (replayed: its position in the passes); `batch_size` is the per-process
  batch; the stream starts at batch `start_step`. With `epoch_steps` > 0 the stream
  replays: epoch e, steps [e * epoch_steps, (e + 1) * epoch_steps), cycles through the
  ceil(len(source) / global batch) batches of the source's pass e, each image once but
  for the last batch's fill.
  """
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  if epoch_steps:
    global_batch = batch_size * process_count
    cycle_steps = -(-len(source) // global_batch)
    ds = _Reindexed(ds, functools.partial(_cycle_element, pass_length=len(source),
                                          cycle_length=cycle_steps * global_batch))
  ds = ds.random_map(transform)
  if epoch_steps:  # After augmenting: a replayed batch is the very same batch.
    ds = _Reindexed(ds, functools.partial(_replayed_element, global_batch=global_batch,
                                          cycle_steps=cycle_steps, epoch_steps=epoch_steps))
  ds = ds.batch(batch_size, drop_remainder=True)[process_index::process_count]
  return ds[start_step:]


def usable_cores() -> int:
  """The cores this process may run on: a Slurm task's --cpus-per-task, taskset and
  container CPU sets show here, where os.cpu_count() counts the whole machine."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def input_workers(num_workers: int = AUTO, read_threads: int = AUTO,
                  cores: int | None = None) -> tuple[int, int]:
  """(worker processes, read threads per process), AUTO ones chosen for `cores` (default
  `usable_cores()`).

  Up to 4 cores: no worker processes and 2 read threads. Decoding and resizing release the
  GIL, so 2 threads in the training process keep 2 cores busy, and on a host this small
  worker processes read no faster (VOC's augmentation at 320, measured:
  benchmarks/results/input_pipeline.json).
  More cores: one worker process per 4 cores, at most 16, each with 2 read threads, so
  the readers take about half the cores and leave the rest to the training loop
  (dispatch, host-to-device copies). The 4-core threshold and that half are rules of
  thumb, not measurements. Where several processes share a host without being bound to
  their own cores (Slurm binds each task to its --cpus-per-task), set data.num_workers per
  process.
  """
  cores = cores or usable_cores()
  if num_workers == AUTO:
    num_workers = 0 if cores <= 4 else min(cores // 4, 16)
  if read_threads == AUTO:
    read_threads = 2
  return num_workers, read_threads


def prefetched(ds: grain.MapDataset, *, num_workers: int = AUTO, read_threads: int = AUTO,
               prefetch: int = 4) -> grain.IterDataset:
  """`ds` read by `read_threads` threads in each of `num_workers` worker processes (0:
  in this process; AUTO: `input_workers`), with up to `prefetch` batches read ahead per
  process."""
  num_workers, read_threads = input_workers(num_workers, read_threads)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch))
  if num_workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


@dataclasses.dataclass
class TrainStreams:
  """The two training iterators; `next()` gives one (labelled, unlabelled) batch pair.

  Save and restore both: `get_state()` / `set_state()` here, or each iterator on its own
  (a state restores into streams with the same number of workers).
  """
  labelled: grain.DatasetIterator
  unlabelled: grain.DatasetIterator

  def __iter__(self):
    return self

  def __next__(self) -> tuple[dict, dict]:
    return next(self.labelled), next(self.unlabelled)

  def get_state(self) -> dict:
    return {'labelled': self.labelled.get_state(),
            'unlabelled': self.unlabelled.get_state()}

  def set_state(self, state: dict) -> None:
    self.labelled.set_state(state['labelled'])
    self.unlabelled.set_state(state['unlabelled'])

  def close(self) -> None:
    """Stops worker processes (they also stop when the iterators are collected)."""
    self.labelled.close()
    self.unlabelled.close()


def make_train_streams(cfg, *, device_count: int = 1, process_index: int = 0,
                       process_count: int = 1,
                       start_step: int = 0) -> TrainStreams:
  """The labelled and unlabelled training iterators of this process, from `start_step`.

  `device_count` is the global number of devices; each global batch must divide over
  them. Pass `jax.device_count()`, `jax.process_index()`, `jax.process_count()`. Either
  restore the iterators' state, or resume with `start_step` = the restored step.
  """
  sizes = dict(train_labelled=cfg.batch_size_labelled,
               train_unlabelled=cfg.batch_size_unlabelled)
  split_sources = {split: factory.make_source(cfg, split) for split in sizes}
  if cfg.pseudo_labels:
    split_sources['train_unlabelled'] = weak.WithPseudoLabels(
        split_sources['train_unlabelled'], cfg.pseudo_labels, cfg.num_classes)
  # An epoch is a pass over the unlabelled set, the last batch counted (as train.py's).
  epoch_steps = -(-len(split_sources['train_unlabelled']) // cfg.batch_size_unlabelled)
  streams = []
  for stream, (split, global_batch) in enumerate(sizes.items()):
    batch_size = per_process_batch_size(
        global_batch, device_count=device_count, process_count=process_count,
        name=f'data.batch_size_{split.removeprefix("train_")}')
    replays = split == 'train_labelled' and cfg.labelled_replay
    ds = train_dataset(
        split_sources[split], factory.train_transform(cfg), batch_size=batch_size,
        seed=stream_seed(cfg.shuffle_seed, stream), process_index=process_index,
        process_count=process_count, start_step=start_step,
        epoch_steps=epoch_steps if replays else 0)
    streams.append(iter(_prefetched(ds, cfg)))
  return TrainStreams(*streams)


def make_eval_dataset(cfg, split: str, *, device_count: int = 1, process_index: int = 0,
                      process_count: int = 1) -> eval_batches.EvalBatches:
  """A re-iterable dataset of this process's share of `split`'s evaluation batches
  ('image', 'mask', 'valid', 'size'; see eval_batches.py), `data.eval_batch_size` images
  per device: `for batch in ds: ...` at every evaluation."""
  source = factory.make_source(cfg, split)
  if cfg.augment:
    sizes = eval_batches.image_sizes(source)
  else:
    sizes = np.tile(np.asarray(cfg.resize_to, np.int64), (len(source), 1))
  ds = eval_batches.eval_batches(source, factory.eval_transform(cfg), sizes,
                                 batch_size=cfg.eval_batch_size * device_count,
                                 bucket=cfg.eval_bucket, process_index=process_index,
                                 process_count=process_count)
  return eval_batches.EvalBatches(_prefetched(ds, cfg), len(ds))


def _prefetched(ds, cfg) -> grain.IterDataset:
  return prefetched(ds, num_workers=cfg.num_workers, read_threads=cfg.read_threads,
                    prefetch=cfg.prefetch)
