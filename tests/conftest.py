import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# keep tests fast and deterministic on 2 cores
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_script(*args, env=None, cwd=None, timeout=600):
    """Run one of the project's scripts in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def script():
    return run_script


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny models run fastest on one thread, which also does not stall while other processes hold
    the cores (utils.setup_threads leaves the count alone when OMP_NUM_THREADS is set)."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server (initdb + pg_ctl from the PATH, run as the ``postgres`` user when
    the tests run as root, which PostgreSQL refuses), or a skip where there is none or no psycopg."""
    import importlib.util
    import pwd
    import shutil
    import socket
    import tempfile

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if importlib.util.find_spec("psycopg") is None or not initdb or not pg_ctl:
        pytest.skip("needs PostgreSQL (initdb, pg_ctl) and psycopg")
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    prefix = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    steps = [[initdb, "-D", str(data), "-U", "ledger", "--auth=trust", "-E", "UTF8"],
             [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
              f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]]
    for step in steps:
        done = subprocess.run(prefix + step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"could not start PostgreSQL: {(done.stderr or done.stdout).strip()[-300:]}")
    yield f"postgresql://ledger@127.0.0.1:{port}"
    subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    """A fresh, empty ledger URL: a SQLite file, and a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "l.db")
    return new_postgres_database(request.getfixturevalue("postgres_server"), request.node.nodeid)


def new_postgres_database(server: str, label: str) -> str:
    """The URL of a new, empty database on the test PostgreSQL server."""
    import psycopg

    name = f"t{os.getpid()}_{abs(hash(label)) % 10 ** 9}"
    with psycopg.connect(server + "/postgres", autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name}")
        db.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
