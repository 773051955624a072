"""AWS Glue entry for the export stage (jobs.export_gremlin) (see glue/entry.py)."""
from glue.entry import main_for

if __name__ == "__main__":
    raise SystemExit(main_for("export"))
