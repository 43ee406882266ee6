"""The yacs config: every official GLIP key with its official default, plus a few port-specific keys.

Use ``get_cfg_defaults()`` (or ``cfg.clone()``), then ``merge_from_file`` / ``merge_from_list`` as in the
official tools; ``check_supported(cfg)`` rejects settings that need features this port does not build.
"""
from collections.abc import Sequence

from yacs.config import CfgNode

from .compat import check_supported, key_status, unsupported_settings
from .defaults import _C as cfg
from .defaults import PORT_KEYS


def get_cfg_defaults() -> CfgNode:
    """A fresh, mutable copy of the default config."""
    return cfg.clone()


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """The defaults, then `config_file`, then the KEY VALUE pairs of `opts` (the command line's); frozen."""
    loaded = get_cfg_defaults()
    loaded.merge_from_file(config_file)
    loaded.merge_from_list(list(opts))
    loaded.freeze()
    return loaded


__all__ = ["PORT_KEYS", "cfg", "check_supported", "get_cfg_defaults", "key_status", "load_config",
           "unsupported_settings"]
