"""Glue entry scripts, one per CPU stage (uploaded as the jobs' ScriptLocation)."""
