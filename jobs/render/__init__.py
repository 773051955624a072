"""Rendering of what a job gathered into text (HTML, SVG): pure functions, no Spark, no I/O."""
