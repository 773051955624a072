"""stylegraph: PySpark batch jobs for NCF recommendation data and the shop-by-style similarity graph."""
from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list[str]:
    lines = (Path(__file__).parent / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


setup(
    name="stylegraph",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["jobs", "jobs.*", "udfs", "udfs.*", "schemas", "schemas.*",
                                    "readers", "readers.*", "emr", "emr.*", "glue", "glue.*"]),
    package_data={"emr": ["*.json", "*.sh"], "glue": ["*.json"]},
    install_requires=_requirements("base.txt"),
    extras_require={"dev": _requirements("dev.txt")},
)
