"""Errors for raw input: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations

__all__ = ["RawInputError", "MissingSeriesError", "RegistrationError"]


class RawInputError(ValueError):
    """A raw series cannot be used (not a 3D image, empty, non-finite voxels, not a head...)."""


class MissingSeriesError(RawInputError, FileNotFoundError):
    """A raw series file does not exist."""


class RegistrationError(RawInputError):
    """Registration found no acceptable alignment (the similarity check failed)."""
