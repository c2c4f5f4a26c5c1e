"""The data folder holds keys, the journal and sealed cards: only paygate's own user may read or list it."""

import os
import pathlib
import stat

# Files and folders paygate's processes (and every child they start) create are the owner's alone.
OWNER_ONLY_UMASK = 0o077
FOLDER_MODE = 0o700
FILE_MODE = 0o600
MAX_ENTRIES = 10_000_000  # a walk past this many entries is a folder that is not ours


class DataFolderError(Exception):
    """The data folder cannot be made owner-only; the message names the path."""


def restrict_new_files() -> None:
    """Every file and folder this process and its children create from now on is owner-only."""
    os.umask(OWNER_ONLY_UMASK)


def restrict_data_folder(data: pathlib.Path) -> None:
    """Creates `data` owner-only, or takes away group and other access from it and from everything in it (what an
    older version made 0644 or 0755); symbolic links are left alone, never followed."""
    data.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    _restrict(data, FOLDER_MODE)
    entries = 0
    for folder, subfolders, files in os.walk(data):
        for name in [*subfolders, *files]:
            entries += 1
            if entries > MAX_ENTRIES:
                raise DataFolderError(f"{data}: more than {MAX_ENTRIES} entries: is this a data folder?")
            path = pathlib.Path(folder, name)
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                _restrict(path, FOLDER_MODE, info)
            elif stat.S_ISREG(info.st_mode):
                _restrict(path, FILE_MODE, info)


def _restrict(path: pathlib.Path, mode: int, info: os.stat_result | None = None) -> None:
    current = stat.S_IMODE((info or path.lstat()).st_mode)
    if current & mode == current:
        return
    try:
        os.chmod(path, current & mode)  # never more than the owner had
    except OSError as error:
        raise DataFolderError(f"{path}: cannot make it owner-only ({error.strerror})") from None
