"""Parameter groups for gradient-norm logging: each backbone names which of its parameters are what.

Training logs ``train/grad_norm/<group>`` per group (docs/training.md); the groups are ``sinks`` (audio sink
tokens), ``cross`` (audio<->video attention), ``text`` (text encoder and text attention), ``video`` and
``audio``, and ``shared`` for anything a backbone leaves to no stream (a wrapper's own scale). Parameter
names depend on the backbone, so each backbone answers
:meth:`~omniforcing.models.protocol.AVBackbone.parameter_group` from its own rules, written as ordered
``(substring, group)`` pairs: the first substring found in the name wins. Substrings, not exact names, so the
prefixes that wrappers add (FSDP, activation checkpointing, ``torch.compile``) change nothing.
"""

from __future__ import annotations

GroupRules = tuple[tuple[str, str], ...]
"""Ordered ``(substring of a parameter name, group)`` pairs; the first match wins."""

GROUPS = ("sinks", "cross", "text", "video", "audio", "shared")
"""Every group a backbone may assign."""


def match_group(name: str, rules: GroupRules, default: str) -> str:
    """The group of the first rule whose substring is in ``name`` (case-insensitive), else ``default``."""
    lowered = name.lower()
    return next((group for key, group in rules if key in lowered), default)
