r"""Exports the splits of a data config as a TFDS array_record dataset (no TensorFlow).

For multi-host training: every host reads one shared array_record dataset through
`tfds.data_source` instead of a folder of small files. The export holds the splits
exactly as the config resolves them (train_labelled, train_unlabelled and the eval
splits, in source order), each example's image and mask as PNG bytes (lossless, so the
export decodes to the very arrays the source gave) and its id:

  python tools/export_tfds.py --config=configs/voc.py \
      --config.data.root=/data/VOCdevkit/VOC2012 --name=voc_1464 --out_dir=/data/tfds

Train from it with the same config and data.export_name='voc_1464',
data.export_dir=/data/tfds: every split is then read from the export. Unlabelled examples
carry a 1x1 placeholder mask that is never read.
"""

import io

from absl import app, flags
import numpy as np
from ml_collections import config_flags
from PIL import Image
import tensorflow_datasets as tfds

from cct_jax import data
from cct_jax.data import IGNORE_INDEX

FEATURES = {
    'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
    'mask': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
    'id': tfds.features.Text(),
}
_PLACEHOLDER_MASK = np.full((1, 1), IGNORE_INDEX, np.uint8)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes given example generators; no download, no checksums, no registration."""

  # TFDS looks for a checksums file next to the builder's code; an export has none (and
  # tfds 4.9.10 would need the importlib_resources package to look).
  code_path = None

  def __init__(self, *, name: str, version: str, config: str | None, features: dict,
               split_examples: dict, data_dir: str):
    self.name = name
    self.VERSION = tfds.core.Version(version)  # pylint: disable=invalid-name
    if config:
      config = tfds.core.BuilderConfig(name=config, version=version)
      self.BUILDER_CONFIGS = [config]  # pylint: disable=invalid-name
    self._features, self._split_examples = features, split_examples
    super().__init__(data_dir=data_dir, config=config, file_format='array_record')

  def _info(self):
    # Shuffling off: example i of a split stays example i of its source.
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                 features=tfds.features.FeaturesDict(self._features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return self._split_examples

  def _generate_examples(self):
    raise NotImplementedError('examples come from _split_generators')


def write_tfds(name: str, split_examples: dict, *, data_dir: str, features: dict,
               version: str = '1.0.0', config: str | None = None) -> str:
  """Writes `split_examples` ({split: iterable of (key, example)}) as `name[/config]`;
  returns the folder written."""
  builder = _Builder(name=name, version=version, config=config, features=features,
                     split_examples=split_examples, data_dir=data_dir)
  if builder.is_prepared():  # TFDS would keep the old data and say nothing.
    raise FileExistsError(f'{builder.data_dir} already holds a prepared dataset; choose '
                          'another name or version, or delete it')
  builder.download_and_prepare()
  return str(builder.data_dir)


def png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def examples(source):
  """(key, example) pairs of a cct-jax source, in its order."""
  for index in range(len(source)):
    example = source[index]
    yield f'{index:09d}', {'image': png(example['image']),
                           'mask': png(example.get('mask', _PLACEHOLDER_MASK)),
                           'id': example['id']}


def export(data_cfg, name: str, out_dir: str, version: str = '1.0.0') -> str:
  """Exports every split of `data_cfg`; returns the folder written."""
  splits = data.TRAIN_SPLITS + data.eval_splits(data_cfg)
  return write_tfds(name, {s: examples(data.make_source(data_cfg, s)) for s in splits},
                    data_dir=out_dir, features=FEATURES, version=version)


def main():
  # Flags are defined here, not on import, so that tests can import this module next to
  # others that define --config.
  config = config_flags.DEFINE_config_file(
      'config', help_string='Project config file; its .data fields say what to export.')
  name = flags.DEFINE_string('name', None, 'Name of the TFDS dataset to write.',
                             required=True)
  out_dir = flags.DEFINE_string('out_dir', None, 'TFDS data dir to write into.',
                                required=True)
  version = flags.DEFINE_string('version', '1.0.0', 'Version of the dataset.')
  app.run(lambda argv: print('wrote', export(config.value.data, name.value, out_dir.value,
                                            version.value)))


if __name__ == '__main__':
  main()
