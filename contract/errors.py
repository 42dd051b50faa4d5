"""The root of the project's error tree, and the contract's own errors.

    ResnetServingError                     a user can cause it and we can explain it in one line
     +-- ContractError                     something breaks the contract (this package)
     |    +-- ManifestError                manifest.json missing, unreadable or invalid
     |    +-- SignatureMismatch            a served signature that does not match the manifest
     |    +-- TensorError                  a TensorProto that does not hold what it declares
     |    +-- ImageShapeError              an image batch that is not the model's uint8 [N,H,W,3]
     |    +-- ConfigError                  a TF Serving config file that cannot be written or read
     +-- model_builder.errors.ModelBuilderError    bad dataset, weights, architecture, export ...
     +-- service.errors.GatewayError               mapped to HTTP status + JSON in one place
     +-- loadtest.errors.LoadTestError             bad target, bad options, unreadable results
     +-- rollout.errors.RolloutError               unreachable gateway or model server, bad plan
     +-- testdoubles.errors.DoubleError            a stand-in that cannot start

The CLI prints `error: <message>` for these and exits 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class ResnetServingError(Exception):
    """An error the user can fix; its message is one line that says what and why."""


class ContractError(ResnetServingError):
    """Something does not follow the contract an export carries."""


class ManifestError(ContractError):
    """A manifest that is missing, unreadable or breaks the schema."""


class SignatureMismatch(ContractError):
    """A served signature whose inputs or outputs differ from what the manifest promises."""


class TensorError(ContractError):
    """A TensorProto whose dtype, shape or values do not fit what the caller expects."""


class ImageShapeError(ContractError):
    """Images whose dtype or shape is not the model's input (a caller's bug, not the client's)."""


class ConfigError(ContractError):
    """A TF Serving config file (models.config, batching, monitoring) that cannot be used."""
