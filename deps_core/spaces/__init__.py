"""Registered supernet spaces. Importing this package registers every built-in space."""

from deps_core.spaces import ofa_mbv3, ofa_proxyless  # noqa: F401  (registration side effect)
from deps_core.spaces.base import SpaceSpec
from deps_core.spaces.registry import create_supernet, list_spaces, register_space, space_spec

__all__ = ["SpaceSpec", "create_supernet", "list_spaces", "register_space", "space_spec"]
