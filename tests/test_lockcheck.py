"""tools/lockcheck.py: requirements.lock records which pyproject.toml dependency lists it was compiled from."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("lockcheck", ROOT / "tools" / "lockcheck.py")
lockcheck = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lockcheck)


def test_the_committed_lock_matches_pyproject():
    assert lockcheck.check(lockcheck.PYPROJECT, lockcheck.LOCK) == ""
    assert subprocess.run([sys.executable, str(ROOT / "tools" / "lockcheck.py")]).returncode == 0


def test_every_locked_requirement_is_pinned_with_hashes():
    requirements = [line for line in lockcheck.LOCK.read_text().splitlines() if line and line[0].isalpha()]
    assert len(requirements) > 50
    assert all("==" in line and line.endswith("\\") for line in requirements)  # hashes follow on the next lines
    names = {line.split("==")[0].lower() for line in requirements}
    assert {"ray", "aiohttp", "msgspec", "lmdb", "pynng", "locust", "pytest", "setuptools"} <= names


def test_a_changed_dependency_list_is_found_until_the_lock_is_stamped_again(tmp_path):
    pyproject, lock = tmp_path / "pyproject.toml", tmp_path / "requirements.lock"
    shutil.copy(lockcheck.PYPROJECT, pyproject)
    shutil.copy(lockcheck.LOCK, lock)
    assert lockcheck.check(pyproject, lock) == ""
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich>=13",'))
    assert "make lock" in lockcheck.check(pyproject, lock)
    lockcheck.stamp(pyproject, lock)
    assert lockcheck.check(pyproject, lock) == ""
    assert lock.read_text().count(lockcheck.HEADER) == 1
    lock.unlink()
    assert "missing" in lockcheck.check(pyproject, lock)
