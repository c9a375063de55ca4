"""Spatial transforms: resampling a volume onto the grid a model was trained on."""
