"""`--mode=predict`: photos -> a palette label PNG and a colour overlay each, losing none.

  python -m cct_jax.main --config=configs/demo.py --workdir=runs/demo --mode=predict \
      --input=photos/ --output=runs/demo/predictions      # or --input=photos/one.jpg

  predictor = Predictor(config, 'runs/demo')              # Colab and other Python code
  labels = predictor.predict(image)                       # (H, W) uint8 class ids

What is read. `--input` is a folder (every visible file in it; subfolders are not
searched) or one file. Every file is decoded once before anything is predicted: one that
cannot be (not an image, a format Pillow does not know, corrupt, truncated, pixels of a
kind below that it cannot bring to RGB) is skipped with one warning line naming it and
why, the others are predicted, and the run ends with one summary line: `predicted N ...`
when every file was predicted, else `SkippedInputs` (a `data.DataError`, so the command
line prints it as its one `error:` line and exits with status 1) after every other file
is written. `predict_folder(..., raise_on_skipped=False)` returns the summary instead.

Pixels. Each photo is turned upright (its EXIF orientation) and brought to 8-bit RGB:
16-bit pixels (Pillow's I;16, I;16B, I;16L and 32-bit I, read as 16 bits) are scaled
(65535 -> 255), not clipped; greyscale is repeated over the three channels; palette, CMYK
and YCbCr go through Pillow's own conversion; transparency (RGBA, LA, PA, a palette's or a
colour key's) is composited over white, as a viewer shows the image on a white page.
Arrays given to `Predictor.predict` follow the same rules (uint8, uint16, or floats in
[0, 1]; (H, W) or (H, W, 1 | 3 | 4)).

Where it writes. `--output` may not be the input folder nor lie inside it (for a single
file: may not be the folder holding it): refused before anything is read, so no input is
ever written over. Each photo gets `<key>.png` (class ids, palette PNG) and
`<key>_overlay.jpg`, at the photo's own size, where the key is the file's stem (`ok` for
`ok.jpg`) unless that stem is shared (ignoring case) with another input's stem or equals
another input's full name; then the key is the full file name (`ok.jpg` and `ok.png` give
`ok.jpg.png`, `ok.jpg_overlay.jpg`, `ok.png.png`, `ok.png_overlay.jpg`). Full names are
unique in a folder and a kept stem differs from every full name, so no two outputs share
a name.

How. Each photo is brought to the scale the config's model sees (`model_scale`: a phone
photo is ten times VOC's) and predicted with the configured inference (scales, flip,
window) in the padded batches of evaluation (a few compiled programs whatever the photos'
sizes; data/eval_batches.py); its labels are brought back to the photo's own size. The
folder and `Predictor.predict` take this one path. Every process reads every file (so
that all agree on the batches) and predicts and writes its share.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from cct_jax import multidomain, parallel, progress, segmentation, visualize
from cct_jax.data import eval_batches, transforms
from cct_jax.data.sources import DataError
from cct_jax.labels import IGNORE_INDEX

# tools/cluster_maps.py lists a folder's images by these; prediction tries every file.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
# Pillow's modes of 16-bit pixels; 'I' (32-bit) is what older Pillows read 16-bit PNGs as.
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')


class PredictionError(DataError):
  """A mistake in what prediction was given (`--input`, `--output`, `--domain`): the
  entry point prints its one line (a DataError) instead of a traceback."""

  def __init__(self, message: str):
    super().__init__([message])
    self.message = message

  def __str__(self) -> str:
    return self.message

  def __reduce__(self):
    return type(self), (self.message,)


class UnsupportedPixels(ValueError):
  """An image whose pixels have no RGB reading here (a shape, dtype or range)."""


# --------------------------------------------------------------------------------------
# Pixels: any image -> upright uint8 RGB.


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  """uint8 of the same shape: 16 bits scaled down, floats in [0, 1] scaled up."""
  if pixels.dtype == np.uint8:
    return pixels
  if pixels.dtype == np.uint16:
    # 65535 / 257 = 255 exactly: the full 16-bit range onto the full 8-bit one.
    return np.round(pixels.astype(np.float32) / 257).astype(np.uint8)
  if pixels.dtype == bool:
    return pixels.astype(np.uint8) * 255
  if np.issubdtype(pixels.dtype, np.floating):
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 1:
      raise UnsupportedPixels(
          f'float pixels must lie in [0, 1]; these span [{np.nanmin(pixels):.4g}, '
          f'{np.nanmax(pixels):.4g}]')
    return np.round(pixels * 255).astype(np.uint8)
  raise UnsupportedPixels(f'pixels of type {pixels.dtype}: expected uint8 (0-255), uint16 '
                          '(0-65535) or floats in [0, 1]')


def array_to_rgb(image) -> np.ndarray:
  """(H, W, 3) uint8 of an (H, W) or (H, W, 1 | 3 | 4) array; a fourth channel is alpha,
  composited over white."""
  pixels = np.asarray(image)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or not all(pixels.shape[:2]):
    raise UnsupportedPixels(f'an image of shape {pixels.shape}: expected (H, W), (H, W, 1), '
                            '(H, W, 3) or (H, W, 4)')
  pixels = _to_uint8(pixels)
  if pixels.shape[-1] == 4:
    alpha = pixels[..., 3:].astype(np.float32) / 255
    pixels = np.round(pixels[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
  return np.broadcast_to(pixels, (*pixels.shape[:2], 3)).copy()


def to_rgb(image: Image.Image) -> np.ndarray:
  """(H, W, 3) uint8 RGB of a Pillow image as it is meant to be seen: its EXIF
  orientation applied, 16-bit scaled, transparency over white (module docstring)."""
  image = ImageOps.exif_transpose(image)
  if image.mode in SIXTEEN_BIT_MODES:
    # convert('RGB') would clip every value above 255 to white.
    return array_to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
  if image.mode == 'F':
    return array_to_rgb(np.asarray(image))
  if image.mode in ALPHA_MODES or 'transparency' in image.info:
    # convert('RGB') would keep whatever colour hides under transparent pixels.
    return array_to_rgb(np.asarray(image.convert('RGBA')))
  return np.asarray(image.convert('RGB'))  # RGB, L, 1, P, CMYK, YCbCr, ...


def read_photo(path: str) -> np.ndarray:
  """The file's pixels as `to_rgb` gives them; raises whatever Pillow raises."""
  with Image.open(path) as image:
    return to_rgb(image)


def why_unreadable(error: Exception) -> str:
  """What a user should read about a file `read_photo` failed on."""
  if isinstance(error, UnidentifiedImageError):
    return 'not an image, or in a format Pillow cannot read'
  if isinstance(error, UnsupportedPixels):
    return str(error)
  return f'cannot be decoded ({type(error).__name__}: {error})'


def check_photos(paths: Sequence[str]) -> tuple[list[tuple[int, int]], list[str]]:
  """Decodes every file once, before any is predicted (so that a bad one never stops the
  batches half-way): the upright (height, width) of each readable file, None for the
  others, and one line per unreadable file saying why."""
  sizes, problems = [], []
  reporter = progress.Reporter(len(paths), unit='files', what='reading the inputs')
  for path in paths:
    try:
      sizes.append(read_photo(path).shape[:2])
    # Pillow raises many types on malformed files (OSError, SyntaxError, struct.error, ...):
    # whatever it raises, the file is the problem, not the run.
    except Exception as error:  # pylint: disable=broad-exception-caught
      sizes.append(None)
      problems.append(f'{path}: {why_unreadable(error)}')
    reporter.update()
  reporter.done()
  return sizes, problems


# --------------------------------------------------------------------------------------
# What is read and where it is written.


def list_images(input_dir: str) -> list[str]:
  """The names of the image files of a folder, by extension (tools/cluster_maps.py)."""
  if not os.path.isdir(input_dir):
    raise PredictionError(f'{input_dir}: no such folder of images')
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise PredictionError(f'{input_dir}: no images ({", ".join(IMAGE_EXTENSIONS)})')
  return names


def _visible_entries(folder: str) -> list[str]:
  """A folder's paths in name order, less the hidden ones (.DS_Store is not a photo)."""
  return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if not n.startswith('.')]


def list_inputs(input_path: str) -> list[str]:
  """The files to predict: `input_path` itself, or every visible file of the folder."""
  if os.path.isfile(input_path):
    return [input_path]
  if not os.path.isdir(input_path):
    raise PredictionError(f'--input={input_path}: no such file or folder')
  files = [p for p in _visible_entries(input_path) if os.path.isfile(p)]
  if not files:
    raise PredictionError(f'--input={input_path}: the folder holds no files to predict')
  return files


def subfolders(input_path: str) -> list[str]:
  """The visible subfolders of an input folder: not searched, but named in a log line."""
  if not os.path.isdir(input_path):
    return []
  return [os.path.basename(p) for p in _visible_entries(input_path) if os.path.isdir(p)]


def check_output_outside_input(input_path: str, output_dir: str) -> None:
  """Refuses an output folder where an output could take an input's name: the input folder
  or one inside it (the outputs of one run would be inputs of the next), or, for a single
  file, the folder holding it."""
  source, target = os.path.realpath(input_path), os.path.realpath(output_dir)
  if os.path.isdir(source):
    if os.path.commonpath([source, target]) == source:
      where = 'is' if target == source else 'lies inside'
      raise PredictionError(
          f'--output={output_dir} {where} the input folder {source}: predictions would be '
          'written among the photos, possibly over one. Give another folder.')
  elif target == os.path.dirname(source):
    raise PredictionError(
        f'--output={output_dir} is the folder of the input {source}: its label PNG could '
        'be written over it or over another photo. Give another folder.')
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise PredictionError(f'--output={output_dir} is a file; give a folder')


def output_keys(paths: Sequence[str]) -> list[str]:
  """The name each input's outputs start with: its stem, or its full file name where the
  stem is shared (ignoring case: on macOS and Windows `A.png` is `a.png`) with another
  input or equals another input's full name."""
  names = [os.path.basename(p) for p in paths]
  stems = [os.path.splitext(n)[0] for n in names]
  stem_counts = {}
  for stem in stems:
    stem_counts[stem.lower()] = stem_counts.get(stem.lower(), 0) + 1
  full_names = {n.lower() for n in names}
  return [stem if stem_counts[stem.lower()] == 1 and stem.lower() not in full_names else name
          for name, stem in zip(names, stems)]


@dataclasses.dataclass
class Summary:
  """What a prediction of files did: the files predicted (by every process), this
  process's written outputs, and one line per skipped file."""
  output_dir: str
  predicted: list[str]
  written: list[str]
  skipped: list[str]

  def __str__(self) -> str:
    line = (f'predicted {len(self.predicted)} image(s): a label PNG and an overlay each in '
            f'{self.output_dir}')
    if self.skipped:
      total = len(self.predicted) + len(self.skipped)
      line += f'; skipped {len(self.skipped)} of {total} file(s) (warned above)'
    return line


class SkippedInputs(PredictionError):
  """Raised after the readable files were predicted, when some were not: its message is
  the summary line, and the entry point exits with status 1."""

  def __init__(self, summary: Summary):
    super().__init__(str(summary))
    self.summary = summary

  def __reduce__(self):
    return type(self), (self.summary,)


# --------------------------------------------------------------------------------------
# The model.


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
  """Photos at the model's scale, as an evaluation source (no labels): `load(i)` gives the
  i-th upright RGB photo, `sizes[i]` its (height, width)."""

  def __init__(self, load: Callable[[int], np.ndarray], sizes: Sequence[tuple[int, int]],
               data_cfg):
    self.load, self.sizes, self.data_cfg = load, list(sizes), data_cfg

  def __len__(self) -> int:
    return len(self.sizes)

  def image_size_of(self, index: int) -> tuple[int, int]:
    return model_scale(self.data_cfg, *self.sizes[index])

  def __getitem__(self, index: int) -> dict:
    height, width = self.image_size_of(index)
    image = np.asarray(Image.fromarray(self.load(index)).resize((width, height),
                                                                Image.Resampling.BICUBIC))
    return {'image': transforms.normalise(image, self.data_cfg.mean, self.data_cfg.std),
            'mask': np.full((height, width), IGNORE_INDEX, np.int32), 'index': index}


def _restore(config, workdir: str, step: int | None, domain: str | None):
  """The checkpoint's state (the best in `workdir`, else the latest; or `step`), the
  prediction function ((state, images, sizes) -> class probabilities, the configured
  inference) of `domain`'s decoders (None: a single-domain model), its data config and
  the mesh. The only place prediction knows how a checkpoint is restored."""
  task = segmentation.build(config)
  state = task.restore(workdir, purpose='predict', step=step)
  return state, task.predict_fn(domain), task.targets[domain].data, task.mesh


def check_domain(config, domain: str | None) -> None:
  """A multi-domain model predicts with one named domain's decoders; a single-domain model
  has none to name."""
  if 'domains' not in config:
    if domain is not None:
      raise PredictionError(f'--domain={domain}: the config has a single domain')
    return
  names = multidomain.domain_names(config)
  if domain not in names:
    given = 'none was given' if domain is None else f'not {domain!r}'
    raise PredictionError("a multi-domain model predicts with one domain's decoders: pass "
                          f'--domain, one of {names} ({given})')


class Predictor:
  """A trained model's label maps of images of any size, with its config's inference.

    predictor = Predictor(config, workdir)          # the best checkpoint; or step=N
    labels = predictor.predict(image)               # (H, W) uint8 class ids
    summary = predictor.write_predictions('photos/', 'out/')

  `domain` picks a multi-domain model's decoders. `predict` takes a Pillow image (its
  EXIF orientation applied) or an array (module docstring); it runs one process's work.
  """

  def __init__(self, config, workdir: str, step: int | None = None,
               domain: str | None = None):
    check_domain(config, domain)
    self.state, predict_probs, self.data_cfg, self.mesh = _restore(config, workdir, step,
                                                                   domain)
    self._labels = jax.jit(
        lambda state, images, sizes: predict_probs(state, images, sizes).argmax(-1),
        out_shardings=parallel.batch_sharded(self.mesh))
    self.global_batch = self.data_cfg.eval_batch_size * jax.device_count()

  def label_maps(self, photos: Photos) -> Iterator[tuple[int, np.ndarray]]:
    """(index, (H, W) uint8 labels at the photo's own size) for this process's share of
    `photos`, in the order of the batches."""
    batches = eval_batches.eval_batches(
        photos, lambda example: example, eval_batches.image_sizes(photos),
        batch_size=self.global_batch, bucket=self.data_cfg.eval_bucket,
        process_index=jax.process_index(), process_count=jax.process_count(),
        keys=('index',))
    reporter = progress.Reporter(len(photos), unit='images', what='prediction')
    for k, (host, waited) in enumerate(progress.timed(batches)):
      batch = parallel.global_batch(self.mesh, {key: host[key] for key in ('image', 'size')})
      labels = parallel.process_local(self._labels(self.state, batch['image'], batch['size']))
      for row in np.flatnonzero(host['valid']):
        index = int(host['index'][row])
        h, w = host['size'][row]
        height, width = photos.sizes[index]
        yield index, np.asarray(Image.fromarray(labels[row, :h, :w].astype(np.uint8)).resize(
            (width, height), Image.Resampling.NEAREST))
      reporter.update(min(self.global_batch, len(photos) - k * self.global_batch),
                      waited_s=waited)
    reporter.done()

  def predict(self, image) -> np.ndarray:
    """(H, W) uint8 class ids of one image at its own (upright) size."""
    if jax.process_count() > 1:
      raise RuntimeError('Predictor.predict runs in one process; several predict a folder '
                         'together (write_predictions)')
    photo = to_rgb(image) if isinstance(image, Image.Image) else array_to_rgb(image)
    ((_, labels),) = self.label_maps(Photos(lambda _: photo, [photo.shape[:2]],
                                            self.data_cfg))
    return labels

  def write_predictions(self, input_path: str, output_dir: str) -> Summary:
    """Predicts a folder of photos (or one file) into `output_dir` (module docstring):
    every readable file, one warning line per other one. Returns the summary."""
    paths = list_inputs(input_path)
    check_output_outside_input(input_path, output_dir)
    if folders := subfolders(input_path):
      logging.info('%s: its subfolders are not searched: %s', input_path, ', '.join(folders))
    keys = output_keys(paths)
    sizes, problems = check_photos(paths)
    for problem in problems:
      logging.warning('skipped %s', problem)
    readable = [i for i, size in enumerate(sizes) if size is not None]
    summary = Summary(output_dir, [paths[i] for i in readable], [], problems)
    if not readable:
      return summary
    photos = Photos(lambda i: read_photo(paths[readable[i]]),
                    [sizes[i] for i in readable], self.data_cfg)
    palette = visualize.palette()
    os.makedirs(output_dir, exist_ok=True)
    for index, labels in self.label_maps(photos):
      key = keys[readable[index]]
      visualize.label_png(labels, palette).save(os.path.join(output_dir, f'{key}.png'))
      Image.fromarray(visualize.colour_overlay(photos.load(index), labels, palette)).save(
          os.path.join(output_dir, f'{key}_overlay.jpg'), quality=90)
      summary.written.append(key)
    return summary


def predict_folder(config, workdir: str, input_path: str, output_dir: str,
                   domain: str | None = None, step: int | None = None, *,
                   raise_on_skipped: bool = True) -> Summary:
  """`--mode=predict`: `<key>.png` (class ids, palette PNG) and `<key>_overlay.jpg` per
  photo of the folder (or the one file) `input_path`, with the best checkpoint in `workdir`
  (or `step`); a multi-domain model predicts with `domain`'s decoders. Logs the summary
  and returns it; raises SkippedInputs after writing when a file was skipped, unless
  `raise_on_skipped` is False."""
  # The user's mistakes are named before the checkpoint is restored.
  check_domain(config, domain)
  list_inputs(input_path)
  check_output_outside_input(input_path, output_dir)
  summary = Predictor(config, workdir, step=step, domain=domain).write_predictions(
      input_path, output_dir)
  if summary.skipped and raise_on_skipped:
    raise SkippedInputs(summary)
  (logging.warning if summary.skipped else logging.info)('%s', summary)
  return summary
