"""The reference pages list exactly what the code has, with the code's defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydantic

import iron_defer_trio as iron_defer
from iron_defer_trio import errors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference"
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \|", re.MULTILINE)
_CONFIG_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|", re.MULTILINE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _documented(page: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in _ROW.finditer((DOCS / page).read_text())}


def _leaf_settings() -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    defaults = iron_defer.Settings()
    for section, field in iron_defer.Settings.model_fields.items():
        value = getattr(defaults, section)
        if isinstance(value, pydantic.BaseModel):
            for key in type(value).model_fields:
                leaves[f"{section}.{key}"] = getattr(value, key)
        else:
            leaves[section] = value
        assert field is not None
    return leaves


def _parse_default(text: str) -> Any:
    text = text.strip("`")
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        return float(match.group(1)) * _UNITS[match.group(2)]
    if text.isdigit():
        return int(text)
    if text.startswith("{"):
        return {k: int(v) for k, v in re.findall(r'"([^"]+)": (\d+)', text)}
    if text == "[]":
        return []
    if text == "none":
        return None
    if text in {"true", "false"}:
        return text == "true"
    return text


def test_config_page_lists_every_setting_with_its_default_and_env_name() -> None:
    """Every settings key is documented once, with the code's default and the environment
    variable the loader reads it from."""
    rows = {
        m.group(1): (m.group(2).strip(), m.group(3).strip())
        for m in _CONFIG_ROW.finditer((DOCS / "config.md").read_text())
    }
    actual = _leaf_settings()
    assert sorted(rows) == sorted(actual)
    for key, value in actual.items():
        default, env = rows[key]
        if isinstance(value, pydantic.SecretStr):
            value = value.get_secret_value()
        assert _parse_default(default) == value, key
        assert f"`IRON_DEFER__{key.replace('.', '__').upper()}`" in env, key


def test_errors_page_lists_every_error_with_its_parent() -> None:
    """Every public error class is documented with its direct base class."""
    documented = _documented("errors.md")
    public = {
        name: getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
    }
    assert sorted(documented) == sorted(public)
    for name, cls in public.items():
        assert documented[name].strip("`") == cls.__bases__[0].__name__, name


def test_rest_page_lists_every_route_and_error_code() -> None:
    """Each route of the route table and each error code of the code table is documented,
    with the code's status."""
    from iron_defer_trio.http._app import ROUTES
    from iron_defer_trio.http._errors import CODES

    page = (DOCS / "rest-api.md").read_text()
    for route in ROUTES:
        assert f"| `{route.method}` | `{route.path}` |" in page, route.path
    codes = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\| `([A-Z_]+)` \| (\d{3}) \|", page, re.MULTILINE)
    }
    assert codes == CODES
