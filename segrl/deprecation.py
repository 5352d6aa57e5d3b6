"""Deprecated config field names: one name per concept (TRL's where TRL has one), old names kept as aliases.

A config that renamed a field keeps the old one as a field defaulting to ``None`` and calls
:func:`apply_renamed_fields` first thing in ``__post_init__``: an old name that was set warns
(``FutureWarning`` naming the old and the new name), is copied onto the new field and is then
consumed (reset to ``None``), so that ``dataclasses.replace(config, new=...)`` works and every
reader has one name to read. The command-line layer maps the same old names
(``segrl.commands._common.CONCEPTS``) before the config is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

__all__ = ["RENAMED_FIELDS_HELP", "apply_renamed_fields"]

#: help text of a kept old field (``--help-all`` lists it; the fast ``--help`` shows it on the new name).
RENAMED_FIELDS_HELP = "Deprecated name of `{new}`."


def apply_renamed_fields(config, renames: Mapping[str, str], *, stacklevel: int = 4) -> None:
    """Move every set deprecated field of ``config`` onto its new name (in place).

    Args:
        config: a dataclass instance with both the old and the new fields.
        renames: old field name -> new field name.
        stacklevel: of the warning; the default points at the caller of the config's constructor
            when called from its ``__post_init__``.

    Raises:
        ValueError: the old and the new name were both given, with different values.
    """
    for old, new in renames.items():
        value = getattr(config, old, None)
        if value is None:
            continue
        warnings.warn(f"`{old}` is deprecated, use `{new}` (same meaning)", FutureWarning, stacklevel=stacklevel)
        current = getattr(config, new)
        if current not in (None, "") and current != value:
            raise ValueError(f"`{old}` (deprecated) = {value!r} and `{new}` = {current!r} disagree: set only `{new}`")
        setattr(config, new, value)
        setattr(config, old, None)
