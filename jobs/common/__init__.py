"""What every job shares: the SparkSession builder, the CLI convention, storage and the run report."""
