"""Errors a user can fix by changing their input.

The CLI turns every ``UserError`` into one line on stderr and exit code 2.
Anything else is a bug or an environment failure and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the study file, the command line or the environment."""


class SpecError(UserError):
    """The study file is invalid. Carries every problem, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class StorageError(UserError):
    """The storage cannot be used (bad URL, unreachable host, conflicting study)."""


class FatalTrialError(UserError):
    """An error inside a trial that every trial would hit (a missing column, an unusable model).

    Objectives raise it, or a subclass (objectives' ``ObjectiveError``), when the
    fault is in the input rather than in the sampled parameters. The runner
    records the trial as FAIL with its reason and stops the worker at once (exit
    code 2) instead of failing the next trials the same way.
    """


class GroupOutOfStep(Exception):
    """A trial run on several processes failed on rank 0 while the other ranks may still wait in a
    collective of that trial: the group cannot go on to the next trial. The runner records the trial as
    FAIL (and queues it again when ``lost_rank``: another rank died, not the configuration) and stops
    the worker (exit 1); torchrun then starts the group again."""

    def __init__(self, message: str, lost_rank: bool = False):
        super().__init__(message)
        self.lost_rank = lost_rank
