"""Pure transformations, ``DataFrame -> DataFrame``: they never read a path and never write."""
