"""looptool/shared, looptool/services and looptool/operators are relative links to the top-level
folders shared/, services/ and operators/: the source tree is the import tree, so type checkers,
IDEs and import-linter resolve ``looptool.shared`` and friends from the repository as they are, and
a wheel holds the linked files as real ones."""

from setuptools import find_packages, setup

# Only the looptool tree: the top-level folders are packages of their own name only through the links.
setup(packages=find_packages(include=["looptool", "looptool.*"]), include_package_data=True)
