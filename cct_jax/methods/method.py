"""What a training method is, as the runs see it (the registry is methods/__init__.py)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method as the runs see it.

  make_term        (config, model) -> term (methods/__init__.py); None: the labelled loss only.
  aux_decoders     the model carries CCT's auxiliary decoders.
  pseudo_labels    the unlabelled batch may carry pseudo-label masks (`data.pseudo_labels`).
  init_extra       (variables) -> the method's state beside the model.
  update_extra     (config, extra, variables) -> extra, after every optimiser step.
  evaluated        (extra, variables) -> the variables that evaluation and prediction use.
  check_config     (config) -> None; raises on settings the method cannot run with.
  default_config   () -> its settings, `config.baselines.<mode>`; None: it has none.
  """
  make_term: Callable | None = None
  aux_decoders: bool = False
  pseudo_labels: bool = False
  init_extra: Callable[[dict], dict] = lambda variables: {}
  update_extra: Callable[[Any, dict, dict], dict] | None = None
  evaluated: Callable[[dict, dict], dict] = lambda extra, variables: variables
  check_config: Callable[[Any], None] = lambda config: None
  default_config: Callable[[], ml_collections.ConfigDict] | None = None

  @property
  def uses_unlabelled(self) -> bool:
    return self.make_term is not None

  def unlabelled_keys(self, data_cfg) -> tuple[str, ...]:
    """The keys of the unlabelled batch the term reads; none without unlabelled data."""
    if not self.uses_unlabelled:
      return ()
    return ('image', 'mask') if self.pseudo_labels and data_cfg.pseudo_labels else ('image',)
