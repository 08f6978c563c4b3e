"""glmip's own exception classes: the errors that are about GL state, not about an argument.

Bad arguments raise ValueError/TypeError naming the value and what is accepted. The classes here
cover what an argument check cannot: a closed object, a context used from the wrong thread or
inherited by a forked process, a GL call that failed, a file whose contents are damaged. Each
subclasses RuntimeError, so code that caught RuntimeError before keeps working; catch `GlmipError`
for all of them.
"""

from __future__ import annotations

__all__ = ["GlmipError", "ClosedError", "WrongThreadError", "ForkedContextError", "GLError", "CorruptFileError"]


class GlmipError(RuntimeError):
    """Base class of glmip's state errors."""


class ClosedError(GlmipError):
    """A Context, Pyramid or other GL-backed object was used after `close()`."""


class WrongThreadError(GlmipError):
    """A Context (or an object of it) was used from a thread other than the one that created it.

    A GL context is current on one thread; glmip binds each Context to its creating thread and
    refuses use elsewhere instead of returning zeros. Create one Context per thread."""


class ForkedContextError(GlmipError):
    """A Context inherited through `fork()` was used in the child process.

    GL and EGL state does not survive fork; create a new Context in the child (glmip's data
    loaders do this lazily in each worker)."""


class GLError(GlmipError):
    """A GL call failed (out of memory, a driver limit)."""


class CorruptFileError(GlmipError, ValueError):
    """A file glmip reads (a saved `TokenBatch`, a slide tile) is damaged or is not what it claims to be:
    truncated, empty, a foreign format, a member missing or of the wrong type.

    `path` is the file, `member` the part of it at fault (a key such as ``layouts[2].cx``, a tile),
    `reason` what is wrong; the message names all three. Also a ValueError, as the bad value is the
    file the caller passed."""

    def __init__(self, path: object, member: str, reason: str) -> None:
        self.path = str(path)
        self.member = member
        self.reason = reason
        super().__init__(f"{self.path}: {member}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # pickles across DataLoader workers
        return type(self), (self.path, self.member, self.reason)
