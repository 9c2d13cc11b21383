"""Package discovery for the two import packages (metadata lives in pyproject.toml).

``vgmed_build`` sits at the top level, ``vgmed_eval`` in ``eval/vgmed_eval``; both are found, never
listed, so a new subpackage cannot be left out of the wheel. The resource folders ``schemas/`` and
``prompts/`` (top level, editable by users) travel as ``vgmed_build._data.*``.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = ["vgmed_build._data.schemas", "vgmed_build._data.prompts"]

setup(
    packages=find_packages(include=["vgmed_build", "vgmed_build.*"])
    + find_packages("eval", include=["vgmed_eval", "vgmed_eval.*"])
    + DATA_PACKAGES,
    package_dir={
        "vgmed_eval": "eval/vgmed_eval",
        "vgmed_build._data.schemas": "schemas",
        "vgmed_build._data.prompts": "prompts",
    },
)
