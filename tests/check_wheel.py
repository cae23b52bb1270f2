"""Check a built wheel: it carries the templates, static files and py.typed, none of the
repository's tests or example project, and installs and imports in a clean virtualenv.

Usage: python tests/check_wheel.py DIST_DIR
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


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        print(f"check_wheel: expected one wheel in {dist}, found {wheels}", file=sys.stderr)
        return 1
    wheel = wheels[0]
    names = set(zipfile.ZipFile(wheel).namelist())
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
            "import importlib.resources as r, django_dbpool; "
            "root = r.files('django_dbpool'); "
            "assert (root / 'py.typed').is_file(); "
            "assert (root / 'templates/django_dbpool/unavailable.html').is_file(); "
            "assert (root / 'static/django_dbpool/dbpool.css').is_file(); "
            "print(django_dbpool.__version__)"
        )
        # Run from the temporary directory so the checkout's own package cannot be imported.
        version = subprocess.run(
            [str(python), "-c", probe], check=True, cwd=tmp, capture_output=True, text=True
        ).stdout.strip()
    print(f"check_wheel: {wheel.name} ({len(names)} files) installs cleanly as {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
