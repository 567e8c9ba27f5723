"""The exceptions the CLI turns into one line and an exit code (UserError: 2)."""


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


class SaveIncomplete(Exception):
    """Training finished but some of its files could not be written; the message names them, why, and
    where the trained weights are. The CLI prints it and exits with 1."""


class Unsaved(Exception):
    """A method wrote some of its files and not others: `written` are on disk, `problems` say what was
    not and why (one line each)."""

    def __init__(self, written: list, problems: list[str]):
        super().__init__("; ".join(problems))
        self.written = list(written)
        self.problems = list(problems)
