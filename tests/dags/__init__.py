"""DAG tests: run with the Airflow environment (.venv-airflow/bin/python -m pytest tests/dags)."""
