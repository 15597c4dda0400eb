"""Dashboard sessions and CSRF protection.

A browser cannot send ``Authorization: Bearer``, so when ``server.api_token`` is set the login
form turns the token into a session cookie. The cookie holds an HMAC of the token, not the
token itself: it is worthless anywhere but this dashboard, and rotating the token logs every
browser out. Both cookies are HttpOnly and SameSite=Strict, so another site can neither read
them nor make the browser send them; every form also carries the CSRF cookie's value (double
submit), which a cross-site page cannot know.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "iron_defer_ui_session"
CSRF_COOKIE = "iron_defer_ui_csrf"
#: The dashboard's cookies are sent to its own paths only, never to the API.
COOKIE_PATH = "/ui"
_SESSION_CONTEXT = b"iron-defer-trio dashboard session v1"


def session_value(token: str) -> str:
    """The session cookie for a browser that proved it knows ``token``."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Whether the login form's ``given`` token is the configured one (constant time)."""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def session_valid(cookie: str | None, token: str) -> bool:
    """Whether ``cookie`` is the session value of ``token`` (constant time)."""
    expected = session_value(token).encode()
    return cookie is not None and hmac.compare_digest(cookie.encode(), expected)


def new_csrf_token() -> str:
    """A fresh per-browser CSRF token."""
    return secrets.token_urlsafe(32)


def csrf_valid(cookie: str | None, form_value: str | None) -> bool:
    """Whether a form's CSRF field matches the browser's CSRF cookie (constant time)."""
    if not cookie or not form_value:
        return False
    return hmac.compare_digest(cookie.encode(), form_value.encode())
