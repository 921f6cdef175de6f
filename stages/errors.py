"""The study's error types: each one is a problem the user can act on.

The CLI prints these as one clean message and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class StudyError(Exception):
    """A problem with the user's input, data or environment, stated in plain words."""


class ParamsError(StudyError):
    """params.yaml (or a config inside a checkpoint) does not fit the schema."""


class DataError(StudyError):
    """A data file is missing, corrupt or of the wrong shape."""


class DownloadError(StudyError):
    """No source could deliver a verified file."""


class CheckpointError(StudyError):
    """A checkpoint is missing, unsafe to load, or does not match the params."""


class TrainingDiverged(StudyError):
    """The loss became NaN or infinite."""


class OutputError(StudyError):
    """An output cannot be written (unwritable folder, full disk)."""
