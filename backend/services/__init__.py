"""Domain logic: routers stay thin and call these."""


class NotFound(LookupError):
    """The named object does not exist (becomes a 404)."""


class Conflict(RuntimeError):
    """The request conflicts with the object's state (becomes a 409)."""
