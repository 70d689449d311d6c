"""Writes tests/fixtures/torch_resnet_tiny.npz: a reduced-width torch ResNet with random
weights and statistics, its state_dict and its per-stage outputs for a fixed input.

The test suite checks, without torch, that the converter plus the Flax trunk reproduce these
outputs. The torch model is written here from the architecture description (paper sec. 4.1), with
the same module names as the authors' deep-stem ResNet and torchvision's resnet50.

  /tmp/torch/bin/python tools/make_torch_parity_fixture.py   # needs torch and numpy
"""

import os

import numpy as np
import torch
from torch import nn

WIDTH = 4
STAGE_SIZES = (1, 1, 2, 2)  # two blocks in the dilated stages: both dilations are exercised
INPUT_SIZE = 33  # odd, so padding and pooling edges matter
OUTPUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures',
                      'torch_resnet_tiny.npz')


class Bottleneck(nn.Module):

  def __init__(self, inplanes, planes, stride, dilation):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
  """Output stride 8: layer3 dilation 1 then 2, layer4 dilation 2 then 4, no strides."""

  def __init__(self, stem):
    super().__init__()
    w = WIDTH
    if stem == 'deep':
      self.conv1, self.bn1 = nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w)
      self.conv2, self.bn2 = nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
      self.conv3, self.bn3 = nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w)
      inplanes = 2 * w
    else:
      self.conv1, self.bn1 = nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w)
      inplanes = w
    self.stem = stem
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    layout = [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
    for i, (blocks, (stride, first_dilation, dilation)) in enumerate(zip(STAGE_SIZES, layout)):
      layer = []
      for j in range(blocks):
        layer.append(Bottleneck(inplanes, w * 2**i, stride if j == 0 else 1,
                                first_dilation if j == 0 else dilation))
        inplanes = w * 2**i * 4
      setattr(self, f'layer{i + 1}', nn.Sequential(*layer))
    self.fc = nn.Linear(inplanes, 10)  # present in real checkpoints; the converter drops it

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    if self.stem == 'deep':
      x = torch.relu(self.bn2(self.conv2(x)))
      x = torch.relu(self.bn3(self.conv3(x)))
    stages = {'stem': self.maxpool(x)}
    x = stages['stem']
    for i in range(1, 5):
      stages[f'layer{i}'] = x = getattr(self, f'layer{i}')(x)
    return stages


def randomise(model, generator):
  """Random weights and BN statistics, so eval-mode BN is not the identity."""
  for module in model.modules():
    if isinstance(module, nn.BatchNorm2d):
      module.weight.data = 0.5 + torch.rand(module.weight.shape, generator=generator)
      module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=generator)
      module.running_mean = 0.1 * torch.randn(module.running_mean.shape, generator=generator)
      module.running_var = 0.5 + torch.rand(module.running_var.shape, generator=generator)


def main():
  generator = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  x = torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)
  arrays = {'input': x.numpy().transpose(0, 2, 3, 1)}
  for stem in ('deep', 'torchvision'):
    model = TinyResNet(stem)
    randomise(model, generator)
    model.eval()
    with torch.no_grad():
      stages = model(x)
    for key, value in model.state_dict().items():
      arrays[f'{stem}/state/{key}'] = value.numpy()
    for name, value in stages.items():
      arrays[f'{stem}/stage/{name}'] = value.numpy().transpose(0, 2, 3, 1)
  np.savez_compressed(OUTPUT, **arrays)
  print(f'wrote {OUTPUT} ({os.path.getsize(OUTPUT):,} bytes)')


if __name__ == '__main__':
  main()
