"""Errors raised by the export step. Each message names the file, tensor or node and says what to do."""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every error the export step raises on purpose."""


class ModelLoadError(ExportError):
    """The file is not a usable ONNX model (unreadable, truncated, external data, bad shapes)."""


class ModelInputError(ExportError):
    """The model's inputs or outputs do not fit: no/several image inputs, dynamic dims, no class output."""


class BlockDiscoveryError(ExportError):
    """No usable convolutional block was found, or an explicit block name is wrong."""


class UnsupportedOpError(ExportError):
    """Ops on the gradient path have no vector-Jacobian builder (all of them are listed)."""


class AlreadyExportedError(ExportError):
    """The model already carries the SISE contract."""


class PassConditionError(ExportError):
    """An export pass found its precondition or postcondition broken (the message names the pass and the
    condition): passes run in the wrong order, or an internal error of the export step."""


class AlignmentError(ExportError):
    """The batch-1 analysis copy's nodes no longer line up, position by position, with the model's."""
