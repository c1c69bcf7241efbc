"""Errors whose message is one sentence meant for the user (CLI and viewer show it as is)."""


class UserFacingError(Exception):
    """Bad input or an impossible request; never a bug. The message is shown verbatim."""
