"""Errors a user can cause and fix; each message is one sentence that says how."""

from __future__ import annotations


class CbamError(Exception):
    """Base of every error shown to the user as one line instead of a traceback."""


class ConfigError(CbamError):
    """An option or a combination of options that cannot work."""


class PlanError(ConfigError):
    """A stage plan that cannot be run (bad epochs, learning rates or module names)."""


class DataError(CbamError):
    """A data set that is missing, empty or unreadable."""


class WeightsError(CbamError):
    """Weights that cannot be fetched, read or fitted to the model."""


class CheckpointError(CbamError):
    """A checkpoint or run directory that cannot be resumed."""


class RunDirError(CbamError):
    """A run directory that cannot be created, written or locked."""
