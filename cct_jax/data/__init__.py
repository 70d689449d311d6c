"""Data: sources (VOC, Cityscapes, CamVid, SUN RGB-D, folders, TFDS, the bundled tex5 and
fashion5 scenes), transforms (paper sec. 4.3) and grain pipelines. Knows nothing of models.

Typical use, from a data config (`default_data_config(name)`, fields in factory.py):

  from cct_jax.data import pipeline
  streams = pipeline.make_train_streams(cfg.data, device_count=jax.device_count(),
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
  labelled, unlabelled = next(streams)      # dicts of numpy arrays
  for batch in pipeline.make_eval_dataset(cfg.data, 'val'): ...  # image, mask, valid, size

This package's own names, and the config side (factory.py), import no data-loading
library (grain, tensorflow-datasets): a config loads, and the train step runs, where only
jax and its neighbours are installed (benchmarks/gpu_check.py). pipeline.py brings grain.
"""

from cct_jax.data.check import DatasetReport, check_dataset
from cct_jax.data.dataset import Dataset
from cct_jax.data.factory import (DATASETS, TRAIN_SPLITS, check_data_config, class_names,
                                  default_data_config, eval_splits, eval_transform,
                                  make_source, split_rule, train_transform)
from cct_jax.data.sources import IGNORE_INDEX, DataError, seeded_split
