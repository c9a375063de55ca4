"""Brain mask transforms: the foreground of a skull-stripped image, optionally eroded."""
