"""The REST API: a quart-trio app over an :class:`~iron_defer_trio.Engine`."""
