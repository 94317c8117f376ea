"""Everything but the package list is in pyproject.toml.

The list is every package found under splitnet/ (a new subpackage cannot leave the wheel) plus
conf/, shipped as splitnet.conf (pyproject's package-dir maps it). pyproject's packages.find
cannot add a mapped package beside the ones it finds, hence this file.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["splitnet", "splitnet.*"]), "splitnet.conf"])
