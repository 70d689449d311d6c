"""`--mode=predict`: a folder of photos -> a palette label PNG and a colour overlay each.

Each photo is turned upright (its EXIF orientation), brought to the scale the config's
model sees (`model_scale`: a phone photo is ten times VOC's), predicted with the configured
inference (scales, flip, window) in the padded batches of evaluation (a few compiled
programs whatever the photos' sizes; data/eval_batches.py), and its labels are brought
back to the photo's own size. Every process predicts and writes its share.
"""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from cct_jax import multidomain, parallel, progress, train, visualize
from cct_jax.data import eval_batches, transforms
from cct_jax.labels import IGNORE_INDEX

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap the stored width and height


def list_images(input_dir: str) -> list[str]:
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f'{input_dir}: no such folder of images')
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise FileNotFoundError(f'{input_dir}: no images ({", ".join(IMAGE_EXTENSIONS)})')
  return names


def read_upright(path: str) -> np.ndarray:
  """uint8 RGB as the photo is meant to be seen: its EXIF orientation applied."""
  with Image.open(path) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert('RGB'))


def model_scale(data_cfg, height: int, width: int) -> tuple[int, int]:
  """The size a (height, width) photo is predicted at: the fixed size of a dataset trained
  at one (`data.resize_to`), else the longer side at `data.base_size` (the scale around
  which training crops were cut; `data.crop_size` where there is no rescaling)."""
  if not data_cfg.augment:
    return tuple(data_cfg.resize_to)
  long_side = data_cfg.base_size or data_cfg.crop_size
  scale = long_side / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


class Photos:
  """The photos of a folder at the model's scale, as an evaluation source (no labels)."""

  def __init__(self, paths: list[str], data_cfg):
    self.paths, self.data_cfg = paths, data_cfg

  def __len__(self) -> int:
    return len(self.paths)

  def image_size_of(self, index: int) -> tuple[int, int]:
    with Image.open(self.paths[index]) as image:
      width, height = image.size
      if image.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS:
        width, height = height, width
    return model_scale(self.data_cfg, height, width)

  def __getitem__(self, index: int) -> dict:
    photo = read_upright(self.paths[index])
    height, width = model_scale(self.data_cfg, *photo.shape[:2])
    image = np.asarray(Image.fromarray(photo).resize((width, height),
                                                     Image.Resampling.BICUBIC))
    return {'image': transforms.normalise(image, self.data_cfg.mean, self.data_cfg.std),
            'mask': np.full((height, width), IGNORE_INDEX, np.int32), 'index': index}


def predict_folder(config, workdir: str, input_dir: str, output_dir: str,
                   domain: str | None = None, step: int | None = None) -> list[str]:
  """Writes `<name>.png` (class ids, palette PNG) and `<name>_overlay.jpg` per photo, with
  the best checkpoint in `workdir` (or `step`); a multi-domain model predicts with
  `domain`'s decoders. Returns the names this process wrote."""
  names = list_images(input_dir)
  if 'domains' in config:
    if domain is None:
      raise ValueError("a multi-domain model predicts with one domain's decoders: pass "
                       f'--domain, one of {multidomain.domain_names(config)}')
    trainer = multidomain.MultiDomainTrainer(config, workdir)
  else:
    trainer = train.SingleDomainTrainer(config, workdir)
  data_cfg = trainer.targets[domain].data
  state = trainer.restore(purpose='predict', step=step)
  predict = jax.jit(lambda state, images, sizes: trainer.predict_fn(domain)(
      state, images, sizes).argmax(-1), out_shardings=parallel.batch_sharded(trainer.mesh))

  photos = Photos([os.path.join(input_dir, name) for name in names], data_cfg)
  global_batch = data_cfg.eval_batch_size * jax.device_count()
  batches = eval_batches.eval_batches(
      photos, lambda example: example, eval_batches.image_sizes(photos),
      batch_size=global_batch, bucket=data_cfg.eval_bucket,
      process_index=jax.process_index(), process_count=jax.process_count(), keys=('index',))
  palette = visualize.palette()
  os.makedirs(output_dir, exist_ok=True)
  reporter = progress.Reporter(len(names), unit='images', what='prediction')
  written = []
  for k, (host, waited) in enumerate(progress.timed(batches)):
    batch = parallel.global_batch(trainer.mesh, {k: host[k] for k in ('image', 'size')})
    labels = parallel.process_local(predict(state, batch['image'], batch['size']))
    for row in np.flatnonzero(host['valid']):
      name = names[host['index'][row]]
      photo = read_upright(os.path.join(input_dir, name))
      h, w = host['size'][row]
      own = Image.fromarray(labels[row, :h, :w].astype(np.uint8)).resize(
          (photo.shape[1], photo.shape[0]), Image.Resampling.NEAREST)
      stem = os.path.splitext(name)[0]
      visualize.label_png(np.asarray(own), palette).save(os.path.join(output_dir, f'{stem}.png'))
      Image.fromarray(visualize.colour_overlay(photo, np.asarray(own), palette)).save(
          os.path.join(output_dir, f'{stem}_overlay.jpg'), quality=90)
      written.append(stem)
    reporter.update(min(global_batch, len(names) - k * global_batch), waited_s=waited)
  reporter.done()
  logging.info('wrote %d label PNGs and overlays to %s', len(written), output_dir)
  return written
