"""Data: sources (VOC, Cityscapes, CamVid, SUN RGB-D, folders, TFDS, the bundled tex5 and
fashion5 scenes), transforms (paper sec. 4.3) and grain pipelines. Knows nothing of models.

Typical use, from a data config (`default_data_config(name)`, fields in factory.py):

  streams = make_train_streams(cfg.data, device_count=jax.device_count(),
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  labelled, unlabelled = next(streams)      # dicts of numpy arrays
  for batch in make_eval_dataset(cfg.data, 'val'): ...   # image, mask, valid, size
"""

from cct_jax.data.check import DatasetReport, check_dataset
from cct_jax.data.dataset import Dataset
from cct_jax.data.factory import (DATASETS, TRAIN_SPLITS, check_data_config, class_names,
                                  default_data_config, eval_splits, eval_transform,
                                  make_eval_dataset, make_source, make_train_streams,
                                  split_rule, train_transform)
from cct_jax.data.pipeline import (TrainStreams, per_process_batch_size, prefetched,
                                   train_dataset)
from cct_jax.data.sources import IGNORE_INDEX, DataError, seeded_split
