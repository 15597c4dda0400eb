"""The web dashboard served under ``/ui``: server-rendered pages over the same engine as the
REST API (see docs/guides/dashboard.md)."""

from iron_defer_trio.http.ui._views import UI_PREFIX, create_dashboard, not_found_page

__all__ = ["UI_PREFIX", "create_dashboard", "not_found_page"]
