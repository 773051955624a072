"""pandas UDFs: the last resort, each with a line saying why no built-in function would do."""
