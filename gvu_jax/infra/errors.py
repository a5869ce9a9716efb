"""Errors caused by the user's input (config, files, paths). The entry point
prints them as one line, without a traceback, and exits non-zero."""


class InputError(ValueError):
  pass


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite updates; the run stopped with the last good
  checkpoint kept."""
