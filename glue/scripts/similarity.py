"""AWS Glue entry for the similarity stage (jobs.similarity) (see glue/entry.py)."""
from glue.entry import main_for

if __name__ == "__main__":
    raise SystemExit(main_for("similarity"))
