"""The rollout's user errors: one line each, printed as `error: ...` with exit status 2.

ResnetServingError
 +-- RolloutError           bad plan, unreachable gateway or model server, unusable config
"""

from __future__ import annotations

from contract.errors import ResnetServingError


class RolloutError(ResnetServingError):
    """Something the operator can fix: a wrong URL or key, a model that is not configured,
    a candidate that is not exported, a plan that makes no sense."""
