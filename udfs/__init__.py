"""Code that runs inside Spark's Python workers: pandas UDFs, ``mapInArrow`` kernels, the edge file
writers and their Arrow helpers. Each says why no built-in function would do; none knows a job."""
