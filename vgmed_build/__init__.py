"""vgmed_build: turn medical segmentation datasets into a clinician-validated VGMED release."""

__version__ = "0.1.0"
