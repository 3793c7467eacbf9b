"""Errors shared by every module. This file imports nothing, so any module can use it
without an import cycle (utils, data_aug, models, victim, defenses all do)."""


class UserError(Exception):
    """A problem with the user's input (flags, paths, files).

    The CLI wrapper prints its message as one sentence and exits with status 2,
    without a traceback unless ``--debug`` is given.
    """


class QueryBudgetExceeded(UserError):
    """A query would take an account past its budget."""
