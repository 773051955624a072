"""AWS Glue entry for the validate stage (jobs.validate_gremlin_csv) (see glue/entry.py)."""
from glue.entry import main_for

if __name__ == "__main__":
    raise SystemExit(main_for("validate"))
