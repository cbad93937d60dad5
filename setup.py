"""Packaging detail pyproject.toml cannot say alone: the top-level rules/ folder (YAML presets)
installs as the package data `surgery._presets`, so presets are addressable by name after install."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["surgery", "surgery.*"]) + ["surgery._presets"],
    package_dir={"surgery._presets": "rules"},
)
