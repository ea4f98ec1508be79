"""The one exception type xbt raises for bad input: the message names the problem and the fix."""


class XBTError(ValueError):
    """Bad input to xbt (mismatched models, empty or NaN data, foreign files...).

    A ``ValueError`` subclass, so callers that already catch ``ValueError`` keep working.
    """


def need(ok: bool, message: str) -> None:
    """Raise an ``XBTError`` with ``message`` unless ``ok`` (the validation of config dataclasses)."""
    if not ok:
        raise XBTError(message)
