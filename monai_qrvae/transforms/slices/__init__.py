"""Slice transforms: invertible selection of contiguous axial slices and the split of volumes into 2D items."""
