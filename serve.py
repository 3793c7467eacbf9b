"""Serve a victim encoder as an HTTP embedding API, and manage its accounts.

  python serve.py accounts create alice --budget 1000 --ledger runs/ledger.db   # prints the API key once
  python serve.py accounts list --ledger runs/ledger.db
  python serve.py --victim-checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt \\
      --ledger runs/ledger.db --port 8000                                       # the API (uvicorn)
  python steal.py --victim-url http://127.0.0.1:8000 --api-key sk-... --losstype mse

The API (``serving.py``): ``GET /healthz``, ``GET /v1/info``, ``GET /v1/usage``,
``POST /v1/embeddings``; auth by ``Authorization: Bearer <key>``; every answered batch is
recorded in the ledger (SQLite, WAL) before its answers leave, and no account is answered
past its budget. FastAPI on uvicorn: a maintained ASGI stack with request validation and
OpenAPI docs at ``/docs``.

Concurrent requests are gathered into one forward pass (``--batching``, ``--batch-wait-ms``);
with batching an answer can differ from a lone forward pass in the last bits of a float (the
kernels depend on the batch size). Not yet served: head access.
"""
from __future__ import annotations

import argparse

from utils import HelpFormatter, apply_numeric_rules, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ledger", default="runs/ledger.db", help="the ledger: a SQLite file path or sqlite:///PATH")
    sub = p.add_subparsers(dest="command")
    acc = sub.add_parser("accounts", help="create or list accounts (the admin side)", formatter_class=HelpFormatter)
    acc_sub = acc.add_subparsers(dest="action", required=True)
    create = acc_sub.add_parser("create", help="open an account and print its API key (shown once)",
                                formatter_class=HelpFormatter)
    create.add_argument("name", help="account name: letters, digits, '-' and '_'")
    create.add_argument("--budget", type=int, default=None, help="queries the account may spend (default: unlimited)")
    create.add_argument("--head-access", action="store_true", help="may ask for projection-head outputs")
    create.add_argument("--rate-limit", type=float, default=None,
                        help="requests per second (a token bucket of one second; over it: 429 with retry_after)")
    for q in (create, acc_sub.add_parser("list", help="every account and its usage")):
        q.add_argument("--ledger", dest="sub_ledger", default=None, help="the ledger (overrides the main --ledger)")
    p.add_argument("--victim-checkpoint", default=None, help="the victim encoder's checkpoint (run.py's default "
                   "run for --dataset and --seed when omitted)")
    p.add_argument("--dataset", default=None, help="the victim's dataset (default: from its checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="which default victim run (with --dataset)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--max-batch", type=int, default=256, help="images per request at most")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body size limit in MiB")
    p.add_argument("--batching", default="on", choices=["on", "off"],
                   help="dynamic batching: requests that arrive while a forward pass runs go through the next "
                        "one together (off: every request is its own forward pass)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="with batching, wait up to this long for more requests before a pass (0: none, so a "
                        "lone client pays no latency)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    from defenses import add_defense_args

    add_defense_args(p)
    return apply_numeric_rules(p)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ledger import Ledger

    if args.command == "accounts":
        ledger = Ledger(args.sub_ledger or args.ledger)
        if args.action == "create":
            key = ledger.create_account(args.name, budget=args.budget, head_access=args.head_access,
                                        rate_limit=args.rate_limit)
            print(key)
            return key
        rows = [ledger.usage(name) for name in ledger.names()]
        for row in rows:
            budget = "unlimited" if row["budget"] is None else row["budget"]
            print(f"{row['account']}: used {row['used']} of {budget} in {row['requests']} requests")
        return rows
    import uvicorn

    from serving import Gateway, Limits, build_app
    from utils import pick_device
    from victim import build_service, load_victim

    device = pick_device(args.device, None)
    victim = load_victim(args.victim_checkpoint, dataset=args.dataset, seed=args.seed)
    from defenses import build_defenses
    from utils import scale_of

    defenses = build_defenses(vars(args), scale_of(victim.dataset, None))
    gateway = Gateway(build_service(victim, defenses=defenses, device=device), Ledger(args.ledger),
                      Limits(max_body_bytes=int(args.max_body_mb * 2 ** 20), max_batch=args.max_batch),
                      batching=args.batching == "on", batch_wait=args.batch_wait_ms / 1000)
    print(f"serving {victim.path} ({victim.dataset}, {victim.image_size} px) on http://{args.host}:{args.port}; "
          f"ledger {args.ledger}; defenses: {', '.join(d.name for d in defenses) or 'none'}", flush=True)
    uvicorn.run(build_app(gateway), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_cli(main)
