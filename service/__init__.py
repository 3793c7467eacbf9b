"""The owner's side: a victim model behind an API.

* ``victim``: :class:`~service.victim.VictimService` (backends, accounts, the defense chain) and
  loading a victim checkpoint; ``classifier``: the owner's classifier victims;
* ``ledger``: accounts, API keys, budgets and the durable record of every batch (SQLite or
  PostgreSQL); ``http``: the FastAPI app (gateway, dynamic batching) that ``serve.py`` runs;
* ``wire``: the request and answer format shared with the client (:mod:`attacks.client`).

The service never imports the attacker's side (import-linter contracts in ``pyproject.toml``).
"""
