"""Writes the first images of a dataset split as PNG files, e.g. to try `--mode=predict`.

  python tools/export_images.py --config=configs/demo.py --split=test --count=8 \
      --output=runs/demo/test_images
"""

import os

from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from cct_jax.data import factory

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('split', 'test', 'Which split.')
flags.DEFINE_integer('count', 8, 'How many images.')
flags.DEFINE_string('output', None, 'Folder to write to.')
flags.mark_flags_as_required(['config', 'output'])


def main(argv):
  del argv
  source = factory.make_source(FLAGS.config.data, FLAGS.split)
  os.makedirs(FLAGS.output, exist_ok=True)
  for i in range(min(FLAGS.count, len(source))):
    example = source[i]
    Image.fromarray(example['image']).save(os.path.join(FLAGS.output, f"{example['id']}.png"))
  print(f'wrote {min(FLAGS.count, len(source))} {FLAGS.split} images to {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
