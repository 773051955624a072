"""stylegraph batch jobs: one module per job, each with ``main(argv=None)``.

Importing this package (or any job module) starts nothing: no SparkSession, no model.
"""
