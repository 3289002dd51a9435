"""Package discovery: the library in src/, the analysis package in analysis/ (installed as
qat_sweep.analysis), conf/ and launchers/ as package data. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup


def under(prefix: str, where: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_namespace_packages(where)]


setup(
    packages=find_packages("src")
    + find_namespace_packages("src", include=["hydra_plugins.*"])
    + under("qat_sweep.analysis", "analysis")
    + under("qat_sweep.conf", "conf")
    + ["qat_sweep.launchers"],
)
