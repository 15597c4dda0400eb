"""The REST API: a quart-trio app over an :class:`~iron_defer_trio.Engine`, served by
hypercorn. It talks to the engine only, never to the store.

``_app`` (create_app, ROUTES) imports quart; ``_schemas`` (the wire models, which the CLI's
``--json`` output shares) does not. This package module imports neither, so the CLI does not
pay for loading the web stack.
"""
