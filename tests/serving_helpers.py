"""Starting serve.py for real in tests: a free local port, a subprocess, a JSON POST helper."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(victim, ledger, port=None, extra=()):
    """serve.py in its own process; returns it and its URL once /healthz answers."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--victim-checkpoint", str(victim),
                             "--ledger", ledger, "--port", str(port), "--device", "cpu", "--max-batch", "64",
                             "--max-body-mb", "0.5", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if json.loads(r.read())["ok"]:
                    return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start: {proc.stdout.read().decode()[-2000:]}") from None
            time.sleep(0.2)


def post(url, body: bytes, key=None, path="/v1/embeddings", headers=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=body, headers=headers), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


TINY = ["--dataset", "digits", "--width", "4", "--image-size", "8", "-b", "64", "--device", "cpu"]


def tiny_victim_and_accounts(root, accounts: dict):
    """A one-epoch tiny victim (run.py) and a ledger beside it with ``accounts`` (name -> the
    ``serve.py accounts create`` flags); returns ``(victim checkpoint, ledger path, {name: key})``."""
    import run
    import serve

    victim = run.main([*TINY, "--epochs", "1", "--logdir", str(root / "victim")])
    ledger = str(root / "ledger.db")
    keys = {name: serve.main(["accounts", "create", name, "--ledger", ledger, *flags])
            for name, flags in accounts.items()}
    return victim, ledger, keys


@contextlib.contextmanager
def tiny_server(root, accounts: dict, extra=()):
    """A tiny victim, a ledger with ``accounts`` and serve.py over them, for a test module's fixture:
    yields ``{"url", "keys", "victim", "ledger", "proc"}`` and stops the server afterwards."""
    victim, ledger, keys = tiny_victim_and_accounts(root, accounts)
    proc, url = start_server(victim, ledger, extra=extra)
    try:
        yield {"url": url, "keys": keys, "victim": victim, "ledger": ledger, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
