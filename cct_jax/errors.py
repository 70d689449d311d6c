"""The one kind of error that is the user's to fix.

A mistake in a flag, a config field, a path or the data raises `UserError` (or a subclass:
config_drift.ConfigDriftError, data.DataError, pretrained.PretrainedWeightsError,
compile_report.LibtpuMissing, ...). `python -m cct_jax.main` prints its message as one
`error: ...` line and exits with status 1, without a traceback: the traceback of a
mistake points into the project's code, where there is nothing to fix. Anything else is a
bug, and keeps its traceback.

`UserError` is a `ValueError`: most of these checks raised ValueError before it existed,
and code and tests that catch ValueError keep working.
"""


class UserError(ValueError):
  """A mistake the user fixes; the message says what is wrong and, where it can, how."""


class NoCheckpointError(UserError, FileNotFoundError):
  """The workdir holds no checkpoint (of the step asked for): train first, or pick a step
  that is kept. Also a FileNotFoundError, which restores raised before."""
