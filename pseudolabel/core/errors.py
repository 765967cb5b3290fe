"""Errors that carry one clear, user-facing sentence.

Library code raises :class:`InputError` when the user's input cannot be used (the CLI prints the
message and exits with status 2) and :class:`ImageError` for a problem confined to one image
(the stage records it and goes on with the next image).
"""


class SapError(Exception):
    """Base class of every error ``sap`` reports to the user as a sentence, without a traceback."""


class InputError(SapError):
    """The input as a whole cannot be used (bad JSON, inconsistent configuration, ...)."""


class ImageError(SapError):
    """One image cannot be processed (missing, unreadable, wrong size); the run goes on."""


class DiskFullError(SapError):
    """A file could not be written because the disk is full (the message names it and the space)."""
