"""The cluster-assumption maps of paper sec. 3.1 (Fig. 2) and App. D (Fig. 7).

Local smoothness: at each position, the mean Euclidean distance between the vector there
and those at its 8 neighbours. High values mark low-density regions. The paper finds them
on the class boundaries in the encoder's output, and not in the input (compared as 20x20
patches, to mimic a receptive field) - the observation behind perturbing z, not x.
"""

import jax
import numpy as np

from cct_jax.models.cct import resize_logits

NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                          if (dy, dx) != (0, 0))


def _window_sums(values: np.ndarray, size: int) -> np.ndarray:
  """Sums of `values` (H + size - 1, W + size - 1) over every size x size window -> (H, W).

  Plain sums (no cumulative-sum differences), so a window of zeros sums to exactly 0.
  """
  rows = np.lib.stride_tricks.sliding_window_view(values, size, axis=0).sum(axis=-1)
  return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1).sum(axis=-1)


def neighbour_distance(features: np.ndarray, patch: int = 1) -> np.ndarray:
  """(H, W, C) -> (H, W): the mean Euclidean distance from each position to its 8
  neighbours, comparing the `patch` x `patch` windows centred there (patch=1: the vectors
  themselves; patch=20: the paper's input patches, of 20 * 20 * C values each).

  The image is extended by repeating its border, so every position has 8 neighbours and
  every window is full; a flat region gives exactly 0.
  """
  if features.ndim != 3:
    raise ValueError(f'features must be (H, W, C), got shape {features.shape}')
  if patch < 1:
    raise ValueError(f'patch must be >= 1, got {patch}')
  height, width, _ = features.shape
  before = patch // 2  # a window centred at y covers y - before .. y - before + patch - 1
  pad = before + 1  # room for the window of any neighbour
  extended = np.pad(np.asarray(features, np.float64),
                    ((pad, pad + patch), (pad, pad + patch), (0, 0)), mode='edge')
  start = pad - before  # the first window's top-left corner in `extended`
  span_h, span_w = height + patch - 1, width + patch - 1
  windows = extended[start:start + span_h, start:start + span_w]
  total = np.zeros((height, width))
  for dy, dx in NEIGHBOUR_OFFSETS:
    shifted = extended[start + dy:start + dy + span_h, start + dx:start + dx + span_w]
    squared = np.sum(np.square(windows - shifted), axis=-1)
    total += np.sqrt(_window_sums(squared, patch))
  return total / len(NEIGHBOUR_OFFSETS)


def encoder_features(model, variables, images: jax.Array) -> jax.Array:
  """The encoder output z of `images` (B, H, W, 3), bilinearly brought up to (B, H, W, C)
  as the paper does before comparing neighbours (inference-mode BN)."""
  z = model.apply(variables, images, method=lambda module, x: module.encoder(x, train=False))
  return resize_logits(z, images.shape[1:3])


def heat_map(distances: np.ndarray) -> np.ndarray:
  """(H, W) distances -> uint8 grey levels, dark where the distance is high (as Fig. 2),
  scaled per map by its maximum (a flat map is white)."""
  peak = np.max(distances)
  scaled = distances / peak if peak > 0 else np.zeros_like(distances)
  return np.round(255.0 * (1.0 - scaled)).astype(np.uint8)

