"""metrics.jsonl on a local workdir and on a bucket (writers.py): a bucket's objects are
written whole, so each flush there must add an object of its own lines, not rewrite one
that grows."""

from cct_jax import writers

LOG_EVERY = 20  # steps per flush, as train.log_every


def contents(workdir) -> dict:
  """{path: bytes} of the workdir's files; TensorBoard's are tensorboardX's own."""
  return {path: path.read_bytes() for path in workdir.rglob('*')
          if path.is_file() and 'tensorboard' not in path.parts}


def flush_scalars(writer, flush: int) -> None:
  first = flush * LOG_EVERY + 1
  writer.write_scalars([(step, {'loss': 0.25, 'learning_rate': 1e-3})
                        for step in range(first, first + LOG_EVERY)])


def test_on_a_bucket_a_flush_uploads_its_own_lines_once_so_the_bytes_grow_linearly(
    tmp_path, monkeypatch):
  """A local folder taken for a bucket. Where a flush makes or changes an object, the
  object goes up whole: a flush costs the sizes of the files it made or changed. Every
  flush costs about the first's, and all of them together what the files hold at the end:
  no byte is sent twice (rewriting one metrics.jsonl sent 50 flushes x 25 on average)."""
  monkeypatch.setattr(writers, 'is_bucket', lambda path: True)
  flushes = 50
  writer = writers.MetricWriter(str(tmp_path))
  writer.start(0, flushes * LOG_EVERY, images_per_step=8)
  uploaded, before = [], contents(tmp_path)
  for flush in range(flushes):
    flush_scalars(writer, flush)
    after = contents(tmp_path)
    uploaded.append(sum(len(data) for path, data in after.items() if before.get(path) != data))
    before = after
  writer.close()

  assert not (tmp_path / writers.METRICS).exists()
  assert len(writers.shard_paths(tmp_path)) == flushes
  assert uploaded[-1] <= 1.1 * uploaded[0]  # step numbers gain digits, nothing more
  assert sum(uploaded) == sum(len(data) for data in after.values())
  records = writers.read_metrics(tmp_path)
  assert [r['step'] for r in records] == list(range(1, flushes * LOG_EVERY + 1))
  assert records[0] == {'step': 1, 'loss': 0.25, 'learning_rate': 1e-3}


def test_a_resumed_bucket_run_numbers_on_and_reads_back_as_a_local_run(tmp_path, monkeypatch):
  """The same two sessions (a run, then its resumption writing an evaluation and steps
  again) in a local workdir and in a bucket: read_metrics gives the same records, the
  local one from a plain metrics.jsonl."""
  def two_sessions(workdir):
    for session in range(2):
      writer = writers.MetricWriter(str(workdir))
      writer.start(session * LOG_EVERY, 3 * LOG_EVERY, images_per_step=8)
      writer.write_eval(session * LOG_EVERY, 'val',
                        {'miou': 0.5 + session / 10, 'pixel_accuracy': 0.9})
      flush_scalars(writer, session)
      flush_scalars(writer, session + 1)
      writer.close()
    return writers.read_metrics(workdir)

  local = two_sessions(tmp_path / 'local')
  assert len((tmp_path / 'local' / writers.METRICS).read_text().splitlines()) == len(local)
  assert not (tmp_path / 'local' / writers.SHARDS).exists()
  monkeypatch.setattr(writers, 'is_bucket', lambda path: True)
  bucket = two_sessions(tmp_path / 'bucket')
  assert [path.name for path in writers.shard_paths(tmp_path / 'bucket')] == [
      f'{n:08d}.jsonl' for n in range(6)]
  assert bucket == local
  # As appended: the first session's evaluation and steps, then the second's, which
  # repeats the steps after its checkpoint.
  assert [r['step'] for r in bucket] == [0, *range(1, 41), 20, *range(21, 61)]
  assert bucket[41] == {'step': 20, 'val/miou': 0.6, 'val/pixel_accuracy': 0.9}
