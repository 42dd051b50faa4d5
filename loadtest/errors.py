"""The load tester's user errors: one line each, printed as `error: ...` with exit status 2.

ResnetServingError
 +-- LoadTestError          bad options, unreachable target, unreadable result files
"""

from __future__ import annotations

from contract.errors import ResnetServingError


class LoadTestError(ResnetServingError):
    """Something the user can fix: a bad URL, an unreachable target, options that clash."""
