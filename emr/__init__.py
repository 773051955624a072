"""Amazon EMR: cluster definitions as data, bootstrap, step builders and the CLI."""
