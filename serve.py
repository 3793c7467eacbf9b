"""Serve a victim encoder as an HTTP embedding API, and manage its accounts.

  python serve.py accounts create alice --budget 1000 --ledger runs/ledger.db   # prints the API key once
  python serve.py accounts list --ledger runs/ledger.db
  python serve.py accounts revoke alice --ledger runs/ledger.db                 # 401 from the next request on
  python serve.py accounts delete alice --ledger runs/ledger.db                 # the account and all its rows
  python serve.py --victim-checkpoint runs/victim_mnistm5k_resnet18_w8_s0/checkpoint.pt \\
      --ledger runs/ledger.db --port 8000                                       # the API (uvicorn)
  SSLSTEAL_API_KEY=sk-... python steal.py --victim-url http://127.0.0.1:8000 --losstype mse

The API (``serving.py``): ``GET /healthz``, ``GET /v1/info``, ``GET /v1/usage``,
``POST /v1/embeddings``; auth by ``Authorization: Bearer <key>``; every answered batch is
recorded in the ledger (SQLite, WAL) before its answers leave, and no account is answered
past its budget; a batch sent with an ``Idempotency-Key`` header is charged once however often
it is retried (the attacker's client sends one per batch). FastAPI on uvicorn; the whole wire
contract is published as OpenAPI at ``/openapi.json`` (browsable at ``/docs``) and in
docs/serving.md.

Concurrent requests are gathered into one forward pass (``--batching``, ``--batch-wait-ms``);
with batching an answer can differ from a lone forward pass in the last bits of a float (the
kernels depend on the batch size).

Outputs (``--outputs``; a request picks one with ``"output": NAME``, the first is the default
answer): an encoder offers ``representation`` and, when the victim has a projection head,
``head`` and ``representation+head``; head outputs go only to accounts created with
``--head-access`` (403 for the others, and ``/v1/info`` lists only what the account may ask
for). A classifier (``--victimtype supervised``: the victim's own classifier, simclrsup.py; or
``--victimtype simclr`` with classifier outputs: the encoder plus a linear probe fitted on
``--dataset-test``'s train split with ``--seed``, as knockoff.py and sslextract.py build it)
offers ``probabilities`` (the default), ``logits``, ``top5`` and ``labels``:

  python serve.py --victimtype supervised --port 8000          # the victim of sslextract.py / extract.py
  python serve.py --outputs logits probabilities --port 8000   # knockoff.py's: a SimCLR victim + probe
  python knockoff.py --victim-url http://127.0.0.1:8000 --api-key sk-... --modeloutput logits

A SimSiam export (the ImageNet victim of stealsimsiam.py) is served like any encoder; its card
says dataset imagenet, input_size 224 (or --input-size), arch, width, stem and out_dim (2048 for
ResNet50). At 224 px a batch of 256 is about 49 MiB of JSON: raise --max-body-mb (e.g. 64) or
lower --max-batch:

  python serve.py --pretrained models/checkpoint_0099-batch256.pth.tar --max-body-mb 64 --port 8000
  python stealsimsiam.py --victim-url http://127.0.0.1:8000 --api-key sk-... --datasetsteal imagenet ...
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from defenses import add_defense_args, build_defenses
from engine.presets import scale_of
from service.classifier import classifier_service
from service.http import Gateway, Limits, build_app
from service.ledger import Ledger
from service.victim import VICTIM_TYPES, EncoderBackend, VictimService, check_victim_type, load_victim
from utils import HelpFormatter, UserError, apply_numeric_rules, pick_device, run_cli

ENCODER_OUTPUTS = ("representation", "head", "representation+head")
CLASSIFIER_OUTPUTS = ("probabilities", "logits", "top5", "labels")  # service.victim.ClassifierBackend's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ledger", default="runs/ledger.db",
                   help="the ledger: a SQLite file path, sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB "
                        "(needs psycopg; the database must exist, the tables are made on first use)")
    sub = p.add_subparsers(dest="command")
    acc = sub.add_parser("accounts", help="create, list, revoke or delete accounts (the admin side)",
                         formatter_class=HelpFormatter)
    acc_sub = acc.add_subparsers(dest="action", required=True)
    create = acc_sub.add_parser("create", help="open an account and print its API key (shown once)",
                                formatter_class=HelpFormatter)
    create.add_argument("name", help="account name: letters, digits, '-' and '_'")
    create.add_argument("--budget", type=int, default=None, help="queries the account may spend (default: unlimited)")
    create.add_argument("--head-access", action="store_true", help="may ask for projection-head outputs")
    create.add_argument("--rate-limit", type=float, default=None,
                        help="requests per second (a token bucket of one second; over it: 429 with retry_after)")
    create.add_argument("--expires-days", type=float, default=None,
                        help="the key stops working this many days from now (401 'expired'; default: never)")
    apply_numeric_rules(create)
    listing = acc_sub.add_parser("list", help="every account and its usage")
    revoke = acc_sub.add_parser("revoke", help="stop an account's key from working at once (401 from its next "
                                               "request on); its ledger rows stay", formatter_class=HelpFormatter)
    delete = acc_sub.add_parser("delete", help="remove an account and every row recorded of it (batches, defense "
                                               "state, kept answers)", formatter_class=HelpFormatter)
    for q in (revoke, delete):
        q.add_argument("name", help="the account's name (see `accounts list`)")
    for q in (create, listing, revoke, delete):
        q.add_argument("--ledger", dest="sub_ledger", default=None, help="the ledger (overrides the main --ledger)")
    p.add_argument("--victim-checkpoint", "--pretrained", dest="victim_checkpoint", default=None,
                   help="the victim encoder's checkpoint (run.py's default run for --dataset and --seed when omitted): "
                        "any checkpoint of this project, or a SimSiam export (the published ImageNet format that "
                        "stealsimsiam.py --pretrained reads; --pretrained is this flag's other name), served as "
                        "its backbone's representations with dataset imagenet on the card")
    p.add_argument("--input-size", dest="image_size", type=int, default=None, metavar="PX",
                   help="the image size the service accepts and publishes on its card (default: the size the victim "
                        "was trained at, from its checkpoint; a SimSiam export records none, so 224, ImageNet's). "
                        "The encoders pool globally, so they run at any size: e.g. a small stand-in victim")
    p.add_argument("--victimtype", default="simclr", choices=sorted(VICTIM_TYPES),
                   help="simclr: a SimCLR-type victim (run.py); supervised: a supervised victim (simclrsup.py), "
                        "served as its own classifier by default; the checkpoint is checked against it")
    p.add_argument("--outputs", nargs="+", default=None, metavar="NAME",
                   choices=ENCODER_OUTPUTS + CLASSIFIER_OUTPUTS,
                   help="the outputs the service offers, the first being the default answer: an encoder's "
                        f"({', '.join(ENCODER_OUTPUTS)}; head ones only to --head-access accounts) or a "
                        f"classifier's ({', '.join(CLASSIFIER_OUTPUTS)}), not both (default: representation, plus "
                        "head and representation+head when the victim has a head; a supervised victim: "
                        "every classifier output, probabilities first)")
    p.add_argument("--dataset-test", dest="dataset_test", default=None, metavar="NAME",
                   help="a served classifier's task: the probe of a simclr victim is fitted on its train split "
                        "(default: the victim's dataset; a supervised victim answers its own)")
    p.add_argument("-data", "--data", dest="data", metavar="DIR", default=None,
                   help="root of the real datasets (for the probe of a served simclr classifier)")
    p.add_argument("--dataset", default=None, help="the victim's dataset (default: from its checkpoint)")
    p.add_argument("--seed", type=int, default=0,
                   help="which default victim run (with --dataset); also seeds a served classifier's probe")
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
    p.add_argument("--idempotency-hours", type=float, default=24.0,
                   help="how long the answer to a request sent with an Idempotency-Key is kept, so that its retry "
                        "is answered again without a second charge")

    add_defense_args(p)
    return apply_numeric_rules(p)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "accounts":
        return manage_accounts(args)
    import uvicorn

    # the ledger first: an unwritable --ledger is refused before the victim is loaded
    ledger = Ledger(args.ledger, idempotency_ttl=args.idempotency_hours * 3600)
    device = pick_device(args.device, None)
    service, victim = build_victim_service(args, device)
    gateway = Gateway(service, ledger,
                      Limits(max_body_bytes=int(args.max_body_mb * 2 ** 20), max_batch=args.max_batch),
                      batching=args.batching == "on", batch_wait=args.batch_wait_ms / 1000)
    offered = ", ".join(f"{name}{' (head access)' if Gateway.is_head(name) else ''}" for name in service.outputs)
    print(f"serving {victim.path} ({victim.dataset}, {victim.image_size} px) on http://{args.host}:{args.port}; "
          f"outputs: {offered}; ledger {ledger.path}; "
          f"defenses: {', '.join(d.name for d in service.defenses) or 'none'}", flush=True)
    uvicorn.run(build_app(gateway), host=args.host, port=args.port, log_level="warning")


def describe_account(row: dict, account) -> str:
    """One line of ``accounts list``."""
    budget = "unlimited" if row["budget"] is None else row["budget"]
    extra = []
    if account.head_access:
        extra.append("head access")
    if account.rate_limit is not None:
        extra.append(f"{account.rate_limit:g} requests/s")
    if account.expires is not None:
        extra.append(f"expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(account.expires))}")
    if account.revoked is not None:
        extra.append(f"REVOKED {time.strftime('%Y-%m-%d %H:%M', time.localtime(account.revoked))}")
    return (f"{row['account']}: used {row['used']} of {budget} in {row['requests']} requests"
            + (f" ({', '.join(extra)})" if extra else ""))


def manage_accounts(args):
    """``serve.py accounts create|list|revoke|delete``: the admin side, on the ledger alone."""
    ledger = Ledger(args.sub_ledger or args.ledger)
    if args.action == "create":
        expires = None if args.expires_days is None else time.time() + args.expires_days * 86400
        key = ledger.create_account(args.name, budget=args.budget, head_access=args.head_access,
                                    rate_limit=args.rate_limit, expires=expires)
        print(key)
        return key
    if args.action == "revoke":
        done = ledger.revoke(args.name)
        print(f"account {args.name!r} " + ("revoked: its key is refused from its next request on; its rows stay"
                                           if done else "was revoked already"))
        return done
    if args.action == "delete":
        removed = ledger.delete(args.name)
        print(f"account {args.name!r} deleted with {removed['batches']} batch rows, {removed['defense_rows']} "
              f"defense rows and {removed['idempotent']} kept answers")
        return removed
    rows = [ledger.usage(name) for name in ledger.names()]
    for row in rows:
        print(describe_account(row, ledger.account(row["account"])))
    return rows


def build_victim_service(args, device):
    """The owner's side: the victim checkpoint, as an encoder or a classifier (``--outputs``,
    ``--victimtype``), behind its defenses; returns ``(service, loaded victim)``."""
    victim = load_victim(args.victim_checkpoint, dataset=args.dataset, seed=args.seed, victimtype=args.victimtype)
    check_victim_type(victim, args.victimtype)
    if getattr(args, "image_size", None) is not None:  # --input-size: what the card publishes, the server accepts
        victim = dataclasses.replace(victim, image_size=args.image_size)
    outputs = args.outputs
    if outputs is None:
        outputs = (list(CLASSIFIER_OUTPUTS) if args.victimtype == "supervised" else
                   ["representation"] + (["head", "representation+head"] if victim.head is not None else []))
    classifier = [name for name in outputs if name in CLASSIFIER_OUTPUTS]
    if classifier and len(classifier) < len(outputs):
        raise UserError(f"--outputs {' '.join(outputs)} mixes an encoder's outputs with a classifier's; serve one "
                        f"kind per service (run serve.py twice, on two ports)")
    if args.dataset_test and not classifier:
        raise UserError("--dataset-test names a served classifier's task, but --outputs serves the encoder; "
                        "add classifier outputs (e.g. --outputs probabilities) or drop --dataset-test")
    defenses = build_defenses(vars(args), scale_of(victim.dataset, None))
    card = {"max_batch": args.max_batch}  # the client splits larger batches
    if not classifier:
        backend = EncoderBackend(victim.encoder, victim.head, device=device)
        return VictimService(backend, answers=outputs[0], defenses=defenses, info={**victim.model_card(), **card},
                             outputs=outputs), victim
    task = args.dataset_test or victim.dataset
    service, _, described = classifier_service(victim, args.victimtype, task, answers=outputs[0], outputs=outputs,
                                               defenses=defenses, card=card, data=args.data, seed=args.seed,
                                               device=device)
    print(f"classifier: {described} on {task}", flush=True)
    return service, victim


if __name__ == "__main__":
    run_cli(main)
