"""Exception types of the library.

Every error a user can cause derives from :class:`GliomaAnalysisError`; its message is one line that
names the file (or folder) and the problem, so front ends can show it as it is, without a traceback.
"""
from __future__ import annotations


class GliomaAnalysisError(Exception):
    """Base class of every user-facing error."""


class ImageReadError(GliomaAnalysisError):
    """A file is missing, unreadable, truncated or not an image format we know."""


class InvalidImageError(GliomaAnalysisError):
    """An image was read but cannot be an MR volume: not 3D, constant, non-finite, vector-valued..."""


class SegmentationAsImageError(InvalidImageError):
    """A label map (segmentation) was given where an MR image was expected."""


class ModalityConflictError(GliomaAnalysisError):
    """Two inputs claim the same modality, or one file is given for two modalities."""


class NoModalityError(GliomaAnalysisError):
    """No recognisable MR modality was found among the inputs."""


class GeometryError(GliomaAnalysisError):
    """Inputs cannot be placed on a common grid (e.g. they do not overlap in physical space)."""


class RegistrationError(GliomaAnalysisError):
    """Co-registration of a series to the reference failed or gave an implausible result."""


class ClinicalBackendError(GliomaAnalysisError):
    """The clinical-input toolkit (BrainLes) or one of its model weights / atlases is missing or failed."""


class OutputError(GliomaAnalysisError):
    """The outputs cannot be written (full disk, no permission, the output path is a file)."""
