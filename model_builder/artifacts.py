"""What `train` (or `build`) leaves in a run directory, and what `export` reads back.

<run_dir>/model.keras      the Keras model; outputs logits (no softmax)
<run_dir>/run.json         RunInfo below: architecture, labels, input size, contract
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.manifest import Normalization, Preprocessing
from model_builder.errors import ModelBuilderError

MODEL_FILE = "model.keras"
INFO_FILE = "run.json"


class RunInfo(BaseModel):
    """The facts about a trained or built model that its export needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    input_height: int = Field(gt=0)
    input_width: int = Field(gt=0)
    labels: tuple[str, ...] = Field(min_length=2)
    normalization: Normalization = Normalization()
    preprocessing: Preprocessing = Preprocessing()
    outputs_logits: bool = True  # False when the last layer already applies softmax
    val_accuracy: float | None = None
    notes: dict[str, str] = {}


def save_run_info(run_dir: Path, info: RunInfo) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / INFO_FILE
    path.write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load_run_info(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / INFO_FILE
    try:
        return RunInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelBuilderError(
            f"no {INFO_FILE} in {run_dir}: pass a run directory written by `train` or `build`"
        ) from None
    except ValidationError as exc:
        raise ModelBuilderError(f"{path} is invalid: {exc.errors()[0]['msg']}") from None
