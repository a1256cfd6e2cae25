"""Every error mainrun raises on purpose, in one tree.

A `MainrunError` is a problem with what the user asked for (a config key, a dataset, a storage
URL, a device): its message says what is wrong and what to do, and the entry points turn it into
exit code 2 with that message and no traceback. Anything else that escapes is a bug.

The trial outcomes at the end are not errors of the user's input: the search's workers raise and
catch them to record a trial as failed, and they never reach an entry point.
"""
from __future__ import annotations


class MainrunError(Exception):
    """Bad input, said in one sentence that names the key, flag or file: exit code 2."""


class ConfigError(MainrunError, ValueError):
    """A run configuration (or the file it came from) is invalid. The message names the key."""


class YamlError(ConfigError):
    """A YAML file could not be read or parsed safely."""


class SpaceError(ConfigError):
    """The search-space file is invalid. The message names the file and the key."""


class DataError(MainrunError):
    """The dataset cannot be loaded or is unusable. The message says what to do."""


class DeviceError(MainrunError, ValueError):
    """The requested device is not a device, or not on this machine, or lacks what the config
    needs on it (a C compiler to compile for CUDA)."""


class ScoringError(MainrunError, ValueError):
    """The validation stream cannot be scored with the configured geometry."""


class SearchError(MainrunError):
    """A search, an export or a report cannot start or go on. The message says why and what to do."""


class InputsChanged(SearchError):
    """A worker found the space file or the titles changed since the search opened the study."""


# ---------------------------------------------------------------------- how a trial ends, inside a worker
class TrialFailed(Exception):
    """The trial's own config failed (e.g. out of memory); recorded as FAIL, not retried."""


class TrialRefused(TrialFailed):
    """The trial's config would not fit in the memory a trial may use; refused before it starts."""


class WorkerBroken(Exception):
    """A CUDA error other than out-of-memory: the process's CUDA context may be unusable, so
    the worker records the trial as failed and exits; the parent starts a fresh worker."""
