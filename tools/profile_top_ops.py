"""The operations that took the most device time in a `train.profile_steps` trace.

  python tools/profile_top_ops.py runs/demo/profile [--top=15]

Reads the newest `*.trace.json.gz` under the folder (jax.profiler writes one per trace,
beside the `.xplane.pb` that TensorBoard's profile plugin and xprof open) and prints each
operation's total time over the traced steps, its share and its count: a first look without
TensorBoard.
"""

import collections
import glob
import gzip
import json
import os

from absl import app, flags

flags.DEFINE_integer('top', 15, 'How many operations to list.')
FLAGS = flags.FLAGS
# Spans of the runtime that enclose the operations (counting them would count time twice).
RUNTIME_SPANS = ('ThunkExecutor::', 'ThreadpoolListener::', 'end: ')


def newest_trace(folder: str) -> str:
  traces = glob.glob(os.path.join(folder, '**', '*.trace.json.gz'), recursive=True)
  if not traces:
    raise SystemExit(f'error: no *.trace.json.gz under {folder}; was train.profile_steps set?')
  return max(traces, key=os.path.getmtime)


def device_threads(events: list[dict]) -> set[tuple[int, int]]:
  """The (pid, tid) of the threads that ran XLA's work: the device streams on an
  accelerator, the XLA:CPU client threads on a CPU; not Python's own."""
  names = {(e['pid'], e.get('tid')): e['args'].get('name', '')
           for e in events if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  processes = {e['pid']: e['args'].get('name', '')
               for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  return {key for key, name in names.items()
          if '/device:' in processes.get(key[0], '') or 'XLA' in name or 'Stream' in name}


def top_ops(trace_path: str, top: int) -> list[tuple[str, float, int]]:
  """(name, total milliseconds, count) of the `top` operations by total time."""
  with gzip.open(trace_path, 'rt') as f:
    events = json.load(f)['traceEvents']
  threads = device_threads(events)
  totals, counts = collections.Counter(), collections.Counter()
  for event in events:
    if (event.get('ph') == 'X' and (event['pid'], event.get('tid')) in threads
        and not event['name'].startswith(RUNTIME_SPANS)):
      totals[event['name']] += event.get('dur', 0) / 1000
      counts[event['name']] += 1
  return [(name, ms, counts[name]) for name, ms in totals.most_common(top)]


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('give the profile folder, e.g. runs/demo/profile')
  path = newest_trace(argv[1])
  rows = top_ops(path, FLAGS.top)
  total = sum(ms for _, ms, _ in top_ops(path, 10**9)) or 1.0
  print(f'{path}\n| operation | ms | share | count |\n|---|---|---|---|')
  for name, ms, count in rows:
    print(f'| {name[:60]} | {ms:.1f} | {100 * ms / total:.1f}% | {count} |')


if __name__ == '__main__':
  app.run(main)
