"""`--mode=predict`: a folder of images -> a palette label PNG and a colour overlay each."""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from cct_jax import multidomain, train, visualize
from cct_jax.data import sources, transforms, voc

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(input_dir: str) -> list[str]:
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f'{input_dir}: no such folder of images')
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise FileNotFoundError(f'{input_dir}: no images ({", ".join(IMAGE_EXTENSIONS)})')
  return names


def predict_folder(config, workdir: str, input_dir: str, output_dir: str,
                   domain: str | None = None) -> list[str]:
  """Writes `<name>.png` (class ids, palette PNG) and `<name>_overlay.jpg` per image; a
  multi-domain model predicts with `domain`'s decoders."""
  names = list_images(input_dir)
  if 'domains' in config:
    config, model, state = multidomain.restore_for_inference(config, workdir, domain)
  else:
    model, state = train.restore_for_inference(config, workdir)
  predict_fn = train.make_predict_fn(config, model)
  palette = voc.palette()
  os.makedirs(output_dir, exist_ok=True)
  written = []
  for i, name in enumerate(names):
    image = sources.read_image(os.path.join(input_dir, name), name)
    x = transforms.normalise(image, config.data.mean, config.data.std)[None]
    labels = np.asarray(jax.device_get(predict_fn(state, x)[0].argmax(-1)), np.uint8)
    stem = os.path.splitext(name)[0]
    visualize.label_png(labels, palette).save(os.path.join(output_dir, f'{stem}.png'))
    Image.fromarray(visualize.colour_overlay(image, labels, palette)).save(
        os.path.join(output_dir, f'{stem}_overlay.jpg'), quality=90)
    written.append(stem)
    logging.info('predicted %d/%d: %s', i + 1, len(names), name)
  logging.info('wrote %d label PNGs and overlays to %s', len(written), output_dir)
  return written
