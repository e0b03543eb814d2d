"""The undo handle every intervention returns: a context manager with ``.remove()`` and ``.active``.

Hooks (:class:`hooked.HookHandle`), steering (``interventions.SteeringHandle``), weight edits
(``interventions.WeightEdit``) and memory resuscitation (``probes.Resuscitation``) all undo
themselves the same way:

    with model.hooks({...}):        # or: h = ...; ...; h.remove()
        ...

Leaving the ``with`` block (also through an exception) removes the change; ``remove()`` is
idempotent, and ``active`` says whether the change is still in place.
"""

from __future__ import annotations


class UndoHandle:
    """Base of every undo handle. Subclasses implement :attr:`active` and :meth:`_undo`.

    :meth:`remove` calls ``_undo`` only while the handle is active, so a second
    ``remove()`` (or leaving a ``with`` block after an explicit ``remove()``) is a no-op;
    ``_undo`` must leave the handle inactive.
    """

    @property
    def active(self) -> bool:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        if self.active:
            self._undo()

    @property
    def state(self) -> str:
        """``"active"`` or ``"removed"`` (for reprs)."""
        return "active" if self.active else "removed"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class WrappingHandle(UndoHandle):
    """An undo handle around another one (``self._handle``, e.g. the :class:`hooked.HookHandle` of
    ``model.hooks``) that adds what was applied: steering, SAE edits."""

    def __init__(self, handle: UndoHandle):
        self._handle = handle

    @property
    def active(self) -> bool:
        return bool(self._handle.active)

    def _undo(self) -> None:
        self._handle.remove()
