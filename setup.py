"""Maps the repository's top-level folders onto one import root:
looptool.shared ← shared/, looptool.services ← services/, looptool.operators ← operators/."""

from setuptools import find_packages, setup

ROOTS = {"looptool": "looptool", "looptool.shared": "shared", "looptool.services": "services", "looptool.operators": "operators"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS, include_package_data=True)
