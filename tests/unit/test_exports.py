"""Pins the public facade: a sorted, existing ``__all__``, public ``__module__`` paths for
everything defined in the package, the testing helpers' exports, and the ``py.typed`` marker."""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path

import pytest

import iron_defer_trio
from iron_defer_trio import testing

PUBLIC = sorted(set(iron_defer_trio.__all__) - {"__version__"})


def test_all_is_sorted_and_unique() -> None:
    """__all__ lists each name once, in sorted order."""
    names = iron_defer_trio.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", iron_defer_trio.__all__)
def test_every_exported_name_exists(name: str) -> None:
    """Each name in __all__ is an attribute of the package."""
    assert hasattr(iron_defer_trio, name)


@pytest.mark.parametrize("name", PUBLIC)
def test_exported_objects_report_the_public_module(name: str) -> None:
    """Classes and functions defined in the package show iron_defer_trio as their module."""
    obj = getattr(iron_defer_trio, name)
    assert inspect.isclass(obj) or inspect.isfunction(obj), name
    assert obj.__module__ == "iron_defer_trio"
    assert obj.__qualname__ == name


def test_public_classes_are_reachable_from_their_reported_path() -> None:
    """module + qualname of each export resolves back to the same object (pickle relies on it)."""
    for name in PUBLIC:
        obj = getattr(iron_defer_trio, name)
        module = importlib.import_module(obj.__module__)
        assert getattr(module, obj.__qualname__) is obj


def test_enum_members_pickle_through_the_public_path() -> None:
    """TaskStatus members survive pickling after the __module__ rewrite."""
    status = iron_defer_trio.TaskStatus.RUNNING
    assert pickle.loads(pickle.dumps(status)) is status


def test_version_is_a_string_matching_the_project() -> None:
    """__version__ is exported and looks like a version."""
    assert isinstance(iron_defer_trio.__version__, str)
    assert iron_defer_trio.__version__.count(".") >= 2


def test_no_private_helpers_leak_into_the_namespace() -> None:
    """The rewrite loop's temporaries are deleted after use."""
    assert not hasattr(iron_defer_trio, "_name")
    assert not hasattr(iron_defer_trio, "_obj")


def test_testing_all_names_exist_and_are_coroutine_functions() -> None:
    """iron_defer_trio.testing exports exactly its three async helpers."""
    assert sorted(testing.__all__) == ["assert_enqueued", "enqueued", "run_until_idle"]
    for name in testing.__all__:
        assert inspect.iscoroutinefunction(getattr(testing, name)), name


@pytest.mark.parametrize("module", ["iron_defer_trio.errors", "iron_defer_trio.config"])
def test_submodule_all_names_exist(module: str) -> None:
    """Modules with their own __all__ define every name they list, sorted."""
    mod = importlib.import_module(module)
    assert mod.__all__ == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_package_ships_the_py_typed_marker() -> None:
    """py.typed sits next to __init__.py so type checkers use the inline types."""
    marker = Path(iron_defer_trio.__file__).parent / "py.typed"
    assert marker.is_file()
