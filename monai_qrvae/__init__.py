"""monai-qrvae: unsupervised lesion detection in brain MRI with quantile-regression VAEs, on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
