"""The expected failures. Entry points print any ``MdmError`` as one line on stderr and exit with
code 2.

Each message names what is wrong and, where there is one, the file or key and how to fix it.
"""

from __future__ import annotations


class MdmError(ValueError):
    """An expected failure: bad input, a bad file, a run that cannot go on."""


class ConfigError(MdmError):
    """A bad config file, key or value; the message names the key."""


class DataError(MdmError):
    """Bad input data; the message names the file or folder."""


class CheckpointError(MdmError):
    """A missing, corrupt or mismatched export, checkpoint or segmenter; the message names the
    file."""


class TrainingError(MdmError):
    """The run cannot go on (e.g. a non-finite loss); the message names the step."""


class ShapeError(MdmError):
    """An input whose size the network cannot take; the message says which sizes work."""
