"""Anomaly-map post-processing transforms: z/p maps, Benjamini-Hochberg and calibrated lesion masks, filters."""
