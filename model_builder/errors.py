"""Errors of the model builder. Each message is one line: what was wrong and the value seen."""

from contract.errors import ResnetServingError


class ModelBuilderError(ResnetServingError):
    """Base of every model_builder error."""


class DatasetError(ModelBuilderError):
    """The dataset folder is missing, empty, has one class, or holds an unreadable image."""


class ArchitectureError(ModelBuilderError):
    """Unknown architecture or arguments that do not fit it."""


class WeightsError(ModelBuilderError):
    """Weights that cannot be found or do not fit the architecture."""


class ExportError(ModelBuilderError):
    """The export cannot be written (e.g. the version already exists)."""


class VerifyError(ModelBuilderError):
    """The export does not match its Keras model, manifest or warmup records."""
