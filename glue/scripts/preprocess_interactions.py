"""AWS Glue entry for the preprocess stage (jobs.preprocess_interactions) (see glue/entry.py)."""
from glue.entry import main_for

if __name__ == "__main__":
    raise SystemExit(main_for("preprocess"))
