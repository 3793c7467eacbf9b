"""The attacker's side: what a customer of an encoder (or classifier) API does with its answers.

* ``client``: :class:`~attacks.client.QueryClient` (budget, answer cache, query log) and the
  connections to a victim served over HTTP (one account or several);
* ``connect``: :func:`~attacks.connect.open_victim`, the one place an attack opens its victim,
  in this process or over HTTP, and the only module of this package that reaches the owner's side;
* ``encoder``: stealing encoders (direct extraction, access head, recreate head) and the
  legitimate user; ``imagenet``: the same at ImageNet scale under torchrun;
* ``extraction``: classic classifier extraction and FGSM transfer; ``distill``: distillation of a
  classifier victim into a pre-trained encoder; ``pretrain``: the attacker's own pre-training;
* ``sybil``: several accounts against per-account defenses.

Nothing here opens the victim's checkpoint: what the attacker knows comes from its flags and the
service's published card.
"""
