"""Errors shared by every module. This file imports nothing, so any module can use it
without an import cycle (utils, data_aug, models, victim, defenses all do)."""


class UserError(Exception):
    """A problem with the user's input (flags, paths, files).

    The CLI wrapper prints its message as one sentence and exits with status 2,
    without a traceback unless ``--debug`` is given.
    """


class QueryBudgetExceeded(UserError):
    """A query would take an account past its budget."""


class ProofRequired(Exception):
    """The service wants a proof of work for this batch before answering it.

    ``puzzle`` (a :class:`defenses.pow.Puzzle`) is bound to the account and to the batch;
    the client solves it and sends the batch again with ``proof={"challenge", "nonce"}``.
    Raised by the ``pow`` defense, caught by the client's connection.
    """

    def __init__(self, puzzle):
        super().__init__(f"proof of work required: {puzzle.bits} bits")
        self.puzzle = puzzle
