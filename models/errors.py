"""The exception every bad input raises, so callers can turn it into a clear message."""


class SonateInputError(ValueError):
    """Input a user can fix (bad text, an unreadable file, a missing checkpoint); the message says how."""
