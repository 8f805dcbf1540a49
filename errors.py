"""Every error prefloop expects, under one base, so faces catch one thing and show one line.

An error here is a problem a person can act on: its message says what went wrong and is safe to
show (no secrets, no tracebacks). Anything else is a bug and surfaces as one. Each domain has its
own subclass so callers can tell them apart, and nobody imports the database just to raise.
"""


class PrefloopError(Exception):
    """A problem a user can act on; the message says what and is safe to show."""


# ground
class StoreError(PrefloopError):
    """The database refused or could not do something (busy, missing row, bad value)."""


# engine
class ModelError(PrefloopError):
    """A model version could not be created, loaded, merged or exported."""


class SamplingError(PrefloopError):
    """Sampling settings or a decode request are invalid."""


class EngineError(PrefloopError):
    """A decoding engine (torch loop, vLLM/SGLang server) is misconfigured or did not answer."""


# domain: annotate
class AuthError(PrefloopError):
    """Sign-in, session or account management refused."""


class PromptImportError(PrefloopError):
    """A prompt file is invalid; nothing was imported."""


class SamplerError(PrefloopError):
    """Pairs could not be sampled (no prompts left, a version that cannot serve)."""


class GuidelineError(PrefloopError):
    """Guideline text was refused; nothing was stored."""


class TransferError(PrefloopError):
    """A judgments export/import or backup could not be done; nothing was changed."""


class LivePromptUnavailable(PrefloopError):
    """A live prompt could not be answered right now."""


# domain: train
class ConfigError(PrefloopError):
    """A round's settings are invalid."""


class DatasetError(PrefloopError):
    """The judgments do not make a usable training set."""


class RoundError(PrefloopError):
    """A round could not be started, run, promoted or rejected."""


# domain: evaluate
class JudgeError(PrefloopError):
    """A simulated judge could not be loaded or gave an invalid vote."""


# service
class SettingError(PrefloopError):
    """A setting's name or value is invalid; nothing was changed."""


class InitError(PrefloopError):
    """First-run setup could not complete."""


class BackupError(PrefloopError):
    """A backup could not be written."""


# faces
class ServeError(PrefloopError):
    """The app could not be served (the port is taken, an address is invalid)."""


class InputError(PrefloopError):
    """An event's input has the wrong type or shape (a hand-made request, never the page)."""
