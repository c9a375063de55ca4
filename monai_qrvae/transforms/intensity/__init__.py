"""Masked intensity transforms: normalisation with statistics taken inside the brain mask only."""
