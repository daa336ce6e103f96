"""A report folder replaced whole: readers see the previous report or the new one, never a
half-written mix (a kill between the tables and the figures used to leave exactly that)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ReportError

STAGING = ".partial-"
RETIRED = ".previous-"
#: What a report folder holds: anything else means the folder is not one (``--out`` pointed
#: at the results folder, say), and replacing it would delete what it holds.
REPORT_SUFFIXES = (".html", ".md", ".tex", ".csv")
REPORT_FOLDERS = ("figures",)


def check_replaceable(folder: Path) -> None:
    """Refuse to replace a folder holding anything a report does not write."""
    if not folder.is_dir():
        return
    foreign = sorted(entry.name for entry in folder.iterdir()
                     if not (entry.is_file() and entry.suffix in REPORT_SUFFIXES)
                     and entry.name not in REPORT_FOLDERS)
    if foreign:
        raise ReportError(f"report folder {str(folder)!r} holds other things than a report "
                          f"({', '.join(foreign[:5])}), which writing the report there would "
                          "delete; choose an empty or new folder with --out")


@contextmanager
def replaced_whole(folder: Path) -> Iterator[Path]:
    """Yield an empty sibling of ``folder`` to write into; when the block ends normally it
    takes ``folder``'s place, otherwise it is deleted and ``folder`` stays as it was.
    Leftovers of a process killed mid-way are removed on the next call."""
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}{STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.parent.glob(f".{folder.name}{RETIRED}*"):
        if not folder.exists():  # killed between the two renames below: keep the old one
            os.replace(stale, folder)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    staging = folder.parent / f".{folder.name}{STAGING}{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = folder.parent / f".{folder.name}{RETIRED}{os.getpid()}"
    if folder.exists():
        os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)
