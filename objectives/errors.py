"""Errors in the user's data or model that doom every trial.

They are raised while preparing an objective, before the first trial, so a
missing column costs seconds rather than a failed study. The CLI reports
them like spec errors: one line, exit code 2.
"""


from hpo.errors import FatalTrialError


class ObjectiveError(FatalTrialError, ValueError):
    """The data or model named in the study cannot be used."""
