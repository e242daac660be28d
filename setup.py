"""Packaging that pyproject.toml cannot say: the repository's probes/ and reports/ folders install as
yoloprof.probes and yoloprof.reports, so site-packages holds one top-level name (`yoloprof`) and a user's own
`probes/` or `reports/` folder can neither collide with nor shadow them. Packages are found, not listed."""

from setuptools import find_packages, setup

MOUNTED = {"probes": "yoloprof.probes", "reports": "yoloprof.reports"}  # folder in the repository -> package

packages = find_packages(include=["yoloprof", "yoloprof.*"])
for folder, name in MOUNTED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir={name: folder for folder, name in MOUNTED.items()},
    package_data={"yoloprof.reports": ["templates/*"]},
)
