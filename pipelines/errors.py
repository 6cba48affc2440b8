"""The errors a user can act on.

Every error that means "the input or the environment is not as it should be" (a config
key, a missing path, a service that does not answer) derives from
:class:`PipelineError`, and its message says what to do next. Entry points turn these
into one line on stderr and exit status 2 (:mod:`pipelines.steps.entrypoint`); anything
else is a bug and keeps its traceback.

Kept free of imports so that a command can fail on one in well under a second.
"""


class PipelineError(RuntimeError):
    """An expected failure; the message names what is wrong and what to do."""


class EvaluationError(PipelineError):
    """Evaluation cannot run as asked; the message says what to do."""
