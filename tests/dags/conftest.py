"""The DAG tests need Airflow 3, which lives in its own environment (``.venv-airflow``, see Makefile).

The job environment's pytest does not collect this folder (Airflow is not installed there, and its pins
do not fit); ``make test`` runs it with ``.venv-airflow/bin/python -m pytest tests/dags``. Airflow's home
is a fresh temporary folder, set before anything imports airflow.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

if importlib.util.find_spec("airflow") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="stylegraph-airflow-home-")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # The DAG bundle dag.test() syncs is this checkout's dags/ folder (read when airflow is imported).
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[2] / "dags")
    os.environ.pop("STYLEGRAPH_DAG_CONFIG", None)
