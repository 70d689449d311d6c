"""Cluster-assumption maps (paper sec. 3.1, Fig. 2) of a trained model on a folder of images.

  python tools/export_images.py --config=configs/demo.py --split=test --count=4 \
      --output=runs/demo/test_images
  python tools/cluster_maps.py --config=configs/demo.py --workdir=runs/demo \
      --input=runs/demo/test_images --output=runs/demo/cluster_maps

For every image it writes `<name>_input.png` (mean distance of each 20x20 input patch to
its 8 neighbours) and `<name>_encoder.png` (the same for the encoder output z, brought up
to the image size), dark where the distance is high, and `cluster_maps.png`: one row per
image of image | prediction | input map | encoder map (| classifier map). The checkpoint is
the best one of the workdir (else the latest), the network the one `--mode=eval` scores.

With `--classifier=<workdir>/classifier` (a `--mode=pretrain_cls` run of the same model
config, sec. 3.3) it adds the paper's third map (App. D, Fig. 7): `<name>_classifier.png`,
the same distance for the encoder trained for image-level classification.
"""

import functools
import os

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from cct_jax import cluster_maps, predict, segmentation, state as state_lib, visualize
from cct_jax.data import sources, transforms

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir holding the checkpoint.')
flags.DEFINE_string('input', None, 'Folder of images.')
flags.DEFINE_string('output', None, 'Folder for the heat maps and the figure.')
flags.DEFINE_integer('patch', 20, 'Side of the input patches compared (the paper: 20).')
flags.DEFINE_integer('zoom', 1, 'Integer enlargement of the figure (nearest neighbour).')
flags.DEFINE_string('classifier', None, 'A classification pre-training run of the same model '
                    '(<workdir>/classifier of --mode=pretrain_cls): adds its encoder\'s map.')
flags.mark_flags_as_required(['config', 'workdir', 'input', 'output'])

TITLES = {'input': 'input patches', 'encoder': 'encoder z', 'classifier': 'classifier z'}


def with_header(figure: np.ndarray, columns: list[str], cell_width: int) -> np.ndarray:
  """The figure under a white strip naming each column."""
  header = Image.new('RGB', (figure.shape[1], 14), 'white')
  draw = ImageDraw.Draw(header)
  for i, title in enumerate(columns):
    draw.text((i * cell_width + 3, 2), title, fill='black')
  return np.concatenate([np.asarray(header), figure], axis=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  names = predict.list_images(FLAGS.input)
  task = segmentation.build(config)
  model, state = task.model, task.restore(FLAGS.workdir, purpose='eval')
  predict_fn = jax.jit(task.predict_fn(None))
  encoders = {'encoder': task.method.evaluated(state.extra, state_lib.variables(state))}
  if FLAGS.classifier:
    encoders['classifier'] = state_lib.variables(
        state_lib.with_encoder_from(state, FLAGS.classifier, task.mesh))
  features_fns = {kind: jax.jit(functools.partial(cluster_maps.encoder_features, model, v))
                  for kind, v in encoders.items()}
  colours = np.asarray(visualize.palette(), np.uint8).reshape(-1, 3)
  os.makedirs(FLAGS.output, exist_ok=True)
  rows = []
  for name in names:
    image = sources.read_image(os.path.join(FLAGS.input, name), name)
    x = transforms.normalise(image, config.data.mean, config.data.std)[None]
    labels = np.asarray(jax.device_get(predict_fn(state, x)[0].argmax(-1)))
    maps = {'input': cluster_maps.neighbour_distance(x[0], FLAGS.patch)}
    for kind, features_fn in features_fns.items():
      maps[kind] = cluster_maps.neighbour_distance(np.asarray(jax.device_get(features_fn(x)))[0])
    stem = os.path.splitext(name)[0]
    greys = {}
    for kind, distances in maps.items():
      greys[kind] = cluster_maps.heat_map(distances)
      Image.fromarray(greys[kind]).save(os.path.join(FLAGS.output, f'{stem}_{kind}.png'))
    rows.append(np.concatenate(
        [image, colours[labels]] + [np.repeat(greys[k][..., None], 3, axis=-1)
                                    for k in maps], axis=1))
  if len({row.shape for row in rows}) > 1:
    raise ValueError(f'{FLAGS.input}: the figure needs images of one size; the maps of '
                     'each image are written all the same')
  zoom = FLAGS.zoom
  figure = np.concatenate(rows, axis=0).repeat(zoom, axis=0).repeat(zoom, axis=1)
  columns = ['image', 'prediction'] + [TITLES[kind] for kind in maps]
  figure = with_header(figure, columns, cell_width=rows[0].shape[1] // len(columns) * zoom)
  path = os.path.join(FLAGS.output, 'cluster_maps.png')
  Image.fromarray(figure).save(path)
  print(f'wrote the heat maps of {len(names)} images and {path}')


if __name__ == '__main__':
  app.run(main)
