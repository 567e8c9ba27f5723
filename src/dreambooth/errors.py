"""The one exception type that the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the input and what is wrong with it."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a step; a checkpoint of it was saved (the message says
    how to go on). The CLI prints it and exits with 130."""


class ProcessesFailed(Exception):
    """A multi-process run (--num-processes) ended with this exit code; its processes said why."""

    def __init__(self, code: int):
        super().__init__(f"training processes exited with code {code}")
        self.code = code
