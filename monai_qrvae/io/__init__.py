"""Where scans live outside the package's NIfTI files: DICOM series (in and out), BIDS datasets, cohort runs.

Each module imports its optional libraries (pydicom/highdicom: the ``dicom`` extra; pybids: the ``bids`` extra)
only when called, so ``import monai_qrvae`` works without them.
"""
