"""Errors of the model registry and the gate; each message names what is wrong and what to do."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation cannot go on."""


class UnknownVersion(RegistryError, KeyError):
    """No committed version has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VersionConflict(RegistryError):
    """An object of a version already exists with different content: versions are immutable."""

    retryable = False  # the stored version stays as it is: another try meets the same object


class IntegrityError(RegistryError):
    """A stored version does not match its recorded hashes (tampered with or corrupt)."""

    retryable = False  # the stored bytes stay as they are until someone looks at them


class AliasConflict(RegistryError):
    """An alias moved under us (compare-and-swap lost), or it did not point where the caller expected."""

    retryable = False  # the comparison it was based on is stale: a new run must decide again


class PreconditionsNotEnforced(RegistryError):
    """The object store ignores generation preconditions, so alias moves could silently lose a race."""

    retryable = False  # the store will not start enforcing them on the next try


class InvalidModelDir(RegistryError, ValueError):
    """A model directory handed to ``register`` is missing what a version must hold."""
