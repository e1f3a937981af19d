"""Errors raised by the engine on purpose; messages name the file, key or class and say what to do."""

from __future__ import annotations


class InspectorError(Exception):
    """Base class of the engine's errors."""


class ConfigError(InspectorError):
    """A config key is unknown, missing or has the wrong type or value."""


class ModelContractError(InspectorError):
    """The model lacks the export contract, or the contract does not fit the config."""


class ImageError(InspectorError):
    """An image cannot be read or does not fit the model (size, channels, bit depth)."""


class ModelRunError(InspectorError):
    """onnxruntime failed while running the model for one image (the image's failure, with the cause)."""


class TargetError(InspectorError):
    """The requested target class does not exist."""


class OutputError(InspectorError):
    """Results could not be written (disk full, permissions, the store): not the image's fault. The run
    stops; running the same command again continues where it stopped. ``recorded``: the outcomes of the
    inputs handled before the error, when it was raised part-way through a batch."""

    recorded: tuple = ()  # set on the instance where it applies


class Interrupted(InspectorError):
    """Stopped by SIGTERM/SIGINT before the work was complete; running the same command again continues."""


class VerdictConflict(InspectorError):
    """A verdict not recorded: another was given on the part since the one the reviewer saw, or the same
    reviewer gave the same verdict moments ago. ``newest``: the part's newest verdict (a dict)."""

    def __init__(self, message: str, newest: dict | None = None):
        super().__init__(message)
        self.newest = newest
