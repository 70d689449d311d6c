"""Pictures of predictions: palette label PNGs, colour overlays, comparison panels."""

import numpy as np
from PIL import Image


def colour_overlay(image: np.ndarray, labels: np.ndarray, palette: list[int],
                   alpha: float = 0.5) -> np.ndarray:
  colours = np.asarray(palette, np.float32).reshape(-1, 3)[labels]
  return ((1 - alpha) * image + alpha * colours).round().astype(np.uint8)


def label_png(labels: np.ndarray, palette: list[int]) -> Image.Image:
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  image.putpalette(palette)
  return image


def palette() -> list[int]:
  """The PASCAL VOC colour map as a flat 768-entry palette: class c's colour spreads the
  bits of c over the high bits of red, green and blue, in turn (255, ignore: off-white)."""
  colours = []
  for label in range(256):
    rgb = [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((label >> (3 * bit + channel)) & 1) << (7 - bit)
    colours += rgb
  return colours


def panel(images, truths, predictions, palette: list[int]) -> np.ndarray:
  """Rows of image | ground truth | prediction, uint8 (for TensorBoard and README). The
  examples may differ in size: each row is padded with black to the widest."""
  colours = np.asarray(palette, np.uint8).reshape(-1, 3)
  rows = [np.concatenate([image, colours[truth], colours[prediction]], axis=1)
          for image, truth, prediction in zip(images, truths, predictions)]
  width = max(row.shape[1] for row in rows)
  return np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)))
                         for row in rows], axis=0)


def denormalise(images: np.ndarray, mean, std) -> np.ndarray:
  """The inverse of the input normalisation, back to uint8 RGB for display."""
  pixels = (np.asarray(images) * np.asarray(std) + np.asarray(mean)) * 255.0
  return np.clip(pixels.round(), 0, 255).astype(np.uint8)
