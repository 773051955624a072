"""AWS Glue: thin entry scripts per CPU job, job definitions as data, and the CLI."""
