"""Unwritable places for tests, even for root (pitfall 12: ``chmod -w`` does not stop root): a read-only
tmpfs mounted on a folder, or ``chattr +i``; skipped where neither is allowed."""
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_dir(path: Path):
    """``path`` as a folder nothing can be written into, even by root (pitfall 12): a read-only tmpfs
    mounted there, else the folder made immutable (chattr +i); undone afterwards. Hides what the
    folder held while mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]
    if os.geteuid() == 0 and shutil.which("mount") and subprocess.run(mount, capture_output=True).returncode == 0:
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    with immutable(path):
        yield path


@contextlib.contextmanager
def immutable(path: Path):
    """``path`` (a file, or a folder that keeps its files) made immutable with chattr +i; skipped where
    impossible."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder unwritable for root here (no tmpfs mount, no chattr +i)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
