"""Defenses a victim can put between its encoder and the attacker.

An output defense is a callable ``defense(answers, state) -> answers`` given to
:class:`victim.Victim`; it sees every batch of fresh answers before they leave the victim.
"""
from defenses.perturb import NoisePerturbation

__all__ = ["NoisePerturbation"]
