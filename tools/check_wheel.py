"""Check a built wheel and sdist: both are named for the distribution ``dj-dbpool``, the
wheel carries the templates, static files and py.typed, none of the repository's tests or
example project, and installs in a clean virtualenv as ``dj-dbpool`` with the import package
``django_dbpool``.

The distribution is not called ``django-dbpool``: that name on PyPI is an unrelated 2018
package which installs an import package of the same name, ``django_dbpool``.

Usage: python tools/check_wheel.py DIST_DIR
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REQUIRED = [
    "django_dbpool/__init__.py",
    "django_dbpool/py.typed",
    "django_dbpool/templates/django_dbpool/unavailable.html",
    "django_dbpool/static/django_dbpool/dbpool.css",
    "django_dbpool/static/django_dbpool/dashboard.js",
    "django_dbpool/templates/django_dbpool/admin/dashboard.html",
    "django_dbpool/migrations/0001_initial.py",
]
FORBIDDEN_PREFIXES = ("tests/", "example_project/", "benchmarks/")
DISTRIBUTION = "dj-dbpool"
# How wheel and sdist file names spell it (PEP 427, PEP 625).
FILENAME_PREFIX = DISTRIBUTION.replace("-", "_") + "-"


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        print(f"check_wheel: expected one wheel in {dist}, found {wheels}", file=sys.stderr)
        return 1
    wheel = wheels[0]
    sdists = sorted(dist.glob("*.tar.gz"))
    misnamed = [p.name for p in [wheel, *sdists] if not p.name.startswith(FILENAME_PREFIX)]
    if misnamed:
        print(
            f"check_wheel: {misnamed} not named for the distribution {DISTRIBUTION} "
            f"({FILENAME_PREFIX}...)",
            file=sys.stderr,
        )
        return 1
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    metadata = [name for name in names if name.endswith(".dist-info/METADATA")]
    declared = [
        line.partition(":")[2].strip()
        for name in metadata
        for line in archive.read(name).decode().splitlines()
        if line.startswith("Name:")
    ]
    if declared != [DISTRIBUTION]:
        print(f"check_wheel: {wheel.name} declares Name: {declared}", file=sys.stderr)
        return 1
    missing = [name for name in REQUIRED if name not in names]
    stray = sorted(name for name in names if name.startswith(FORBIDDEN_PREFIXES))
    if missing or stray:
        print(
            f"check_wheel: {wheel.name} missing {missing}, should not contain {stray}",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="dbpool-wheel-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
        probe = (
            "import importlib.metadata as m, importlib.resources as r, django_dbpool; "
            "root = r.files('django_dbpool'); "
            "assert (root / 'py.typed').is_file(); "
            "assert (root / 'templates/django_dbpool/unavailable.html').is_file(); "
            "assert (root / 'static/django_dbpool/dbpool.css').is_file(); "
            f"assert m.packages_distributions()['django_dbpool'] == [{DISTRIBUTION!r}]; "
            f"assert m.version({DISTRIBUTION!r}) == django_dbpool.__version__; "
            "print(django_dbpool.__version__)"
        )
        # Run from the temporary directory so the checkout's own package cannot be imported.
        version = subprocess.run(
            [str(python), "-c", probe], check=True, cwd=tmp, capture_output=True, text=True
        ).stdout.strip()
    print(
        f"check_wheel: {wheel.name} ({len(names)} files) installs cleanly as {DISTRIBUTION} "
        f"{version}, import package django_dbpool"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
