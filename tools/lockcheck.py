"""Whether requirements.lock was compiled from pyproject.toml's current dependency lists.

`make lock` records a hash of those lists on the lock's first line (`--stamp`); `make venv` and `make test` refuse a
lock whose hash differs, so nobody installs or tests pins that pyproject.toml no longer asks for. Standard library
only: it runs before any virtual environment exists.
"""

import hashlib
import json
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
HEADER = "# pyproject-dependencies-sha256: "


def dependency_lists(pyproject: pathlib.Path) -> dict:
    """Everything in pyproject.toml that decides what the lock must hold."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    extras = project.get("optional-dependencies", {})
    return {
        "build-system": sorted(data["build-system"]["requires"]),
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {name: sorted(extras[name]) for name in sorted(extras)},
    }


def dependencies_sha256(pyproject: pathlib.Path) -> str:
    return hashlib.sha256(json.dumps(dependency_lists(pyproject), sort_keys=True).encode()).hexdigest()


def recorded_sha256(lock: pathlib.Path) -> str:
    first_line = lock.read_text().partition("\n")[0] if lock.exists() else ""
    return first_line.removeprefix(HEADER) if first_line.startswith(HEADER) else ""


def stamp(pyproject: pathlib.Path, lock: pathlib.Path) -> None:
    """Record pyproject.toml's hash on the lock's first line, replacing an older record."""
    lines = lock.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith(HEADER):
        lines = lines[1:]
    lock.write_text(HEADER + dependencies_sha256(pyproject) + "\n" + "".join(lines))


def check(pyproject: pathlib.Path, lock: pathlib.Path) -> str:
    """'' when the lock matches pyproject.toml, else what is wrong and what to do, in one line."""
    if not lock.exists():
        return f"{lock.name} is missing: run `make lock`"
    if recorded_sha256(lock) != dependencies_sha256(pyproject):
        return f"{lock.name} was not compiled from this pyproject.toml's dependencies: run `make lock` and commit both"
    return ""


def main(argv: list[str]) -> int:
    if argv == ["--stamp"]:
        stamp(PYPROJECT, LOCK)
        return 0
    if argv == ["--build-requires"]:
        print("\n".join(dependency_lists(PYPROJECT)["build-system"]))
        return 0
    if argv:
        print("usage: lockcheck.py [--stamp | --build-requires]", file=sys.stderr)
        return 2
    problem = check(PYPROJECT, LOCK)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
