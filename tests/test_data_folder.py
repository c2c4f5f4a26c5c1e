"""The data folder is owner-only: what paygate creates, and what an older version left readable by others."""

import os
import stat
import subprocess
import sys

from edge.folders import restrict_data_folder
from edge_harness import Server


def mode(path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_older_data_folder_becomes_owner_only(tmp_path):
    data = tmp_path / "data"
    journal = data / "shard-0" / "journal"
    journal.mkdir(parents=True)
    for folder in (data, data / "shard-0", journal):
        folder.chmod(0o755)
    (journal / "data.mdb").write_bytes(b"x")
    (journal / "data.mdb").chmod(0o644)
    (data / "gateway.key").write_bytes(b"k")
    (data / "gateway.key").chmod(0o600)
    (data / "run.sh").write_bytes(b"")
    (data / "run.sh").chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    restrict_data_folder(data)
    assert [mode(folder) for folder in (data, data / "shard-0", journal)] == [0o700] * 3
    assert mode(journal / "data.mdb") == mode(data / "gateway.key") == 0o600
    assert mode(data / "run.sh") == 0o600  # nothing in the data folder is run
    assert mode(outside) == 0o644  # a link is never followed out of the folder


def test_a_new_data_folder_is_made_owner_only(tmp_path):
    restrict_data_folder(tmp_path / "new" / "data")
    assert mode(tmp_path / "new" / "data") == 0o700


def test_children_of_a_restricted_process_create_owner_only_files(tmp_path):
    script = ("import os, sys; from edge.folders import restrict_new_files; restrict_new_files(); "
              "import subprocess; subprocess.run([sys.executable, '-c', "
              "'open(\"made\", \"w\").close(); import os; os.mkdir(\"folder\")'], check=True)")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert mode(tmp_path / "made") == 0o600 and mode(tmp_path / "folder") == 0o700


def test_serve_makes_what_an_older_version_left_readable_owner_only(tmp_path):
    data = tmp_path / "data"
    Server(data).start().stop()
    journal = data / "shard-0" / "journal"
    for path in (data, data / "shard-0", journal):
        path.chmod(0o755)
    for path in (journal / "data.mdb", journal / "lock.mdb", data / "shards.json", data / "gateway.key"):
        path.chmod(0o644)
    Server(data).start().stop()
    assert [mode(path) for path in (data, data / "shard-0", journal)] == [0o700] * 3
    for path in data.rglob("*"):
        assert mode(path) & 0o077 == 0, (path, oct(mode(path)))
