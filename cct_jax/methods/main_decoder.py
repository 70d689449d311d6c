"""The pass of the encoder and main decoder alone that App. A's input-consistency baselines
(mean_teacher.py, input_vat.py) train through: they enforce consistency on the input, where
CCT enforces it on the encoder's output, and have no auxiliary decoders."""


def train_logits(model, variables, images):
  """Main logits with batch-statistics BN, and the BN statistics this pass leaves."""
  (logits, _), updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  return logits, updates['batch_stats']
