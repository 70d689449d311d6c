"""The label value no loss and no score counts: VOC's object boundaries, the padding of
crops and evaluation batches, and the pixels a pseudo-label leaves unsure (paper sec. 3.3)."""

IGNORE_INDEX = 255
