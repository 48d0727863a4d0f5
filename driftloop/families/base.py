"""What a model family is: the small protocol that `train`, `export`, `optimize` and `evaluate` iterate.

A family is one module under `driftloop/families/` holding one `Family` object, registered in
`driftloop.families.FAMILIES`, plus its section under `train:` in params.yaml (typed by its
`params_model`, so a typo fails at load). The stages never name a family: they loop over the
families the train stage fitted (`models/native/families.json`).

Heavy libraries (scikit-learn, torch, onnx) are imported inside the methods, so `driftloop.config`
can build `TrainParams` from the registry without paying for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import pandas as pd

    from driftloop.dataset import Dataset
    from driftloop.schema import TensorSpec


class FamilyParams(BaseModel):
    """Base of every family's `train.<family>` section: frozen, unknown keys refused.

    Attributes:
        enabled: False leaves the family out of train (and so of every later stage).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True


@dataclass
class Candidate:
    """One optimized graph of a family, before it is measured.

    Attributes:
        graph: raw columns in, `probability` FP32 `[n, 1]` out.
        parent: the FP32 graph it derives from (a key of the family's `to_onnx` result, the family's name).
        how: one line for people: how it was made.
    """

    graph: onnx.ModelProto
    parent: str
    how: str


@dataclass
class CandidateContext:
    """What `Family.candidates` may use (everything in memory; the stage did the I/O).

    Attributes:
        fitted: what `Family.load` returned.
        graphs: the family's graphs from `export` (`Family.to_onnx` keys).
        train, valid: the feature splits (raw columns + `label`).
        optimize: the `optimize` params section.
        params: the family's own `train.<family>` section.
        seed: `train.seed`.
        opset: `export.opset`.
    """

    fitted: Any
    graphs: dict[str, onnx.ModelProto]
    train: pd.DataFrame
    valid: pd.DataFrame
    optimize: Any
    params: FamilyParams
    seed: int
    opset: int
    notes: list[str] = field(default_factory=list)


class Family(Protocol):
    """A model family. `name` is its key in `FAMILIES`, in `train:` and in file names."""

    name: str
    params_model: type[FamilyParams]

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame, params: FamilyParams, seed: int, dataset: Dataset
    ) -> tuple[Any, list[dict]]:
        """Fit on the train split (preprocessing included) over `dataset.features` (BYTES columns
        categorical, INT64/FP32 numeric); returns (fitted, curve rows for `dvc plots`)."""
        ...

    def save(self, fitted: Any, folder: Path) -> None:
        """Write the fitted model into `folder` (file names prefixed with `name`); no pickle reaches serving."""
        ...

    def load(self, folder: Path) -> Any:
        """Read what `save` wrote."""
        ...

    def predict(self, fitted: Any, frame: pd.DataFrame) -> np.ndarray:
        """Native probabilities of the positive class, float `[n]`, from the raw feature columns
        (the ones `fit` saw, read from the fitted model)."""
        ...

    def to_onnx(self, fitted: Any, opset: int, inputs: list[TensorSpec]) -> dict[str, onnx.ModelProto]:
        """The family's graphs: key `name` is the whole model (`inputs` = `Dataset.input_specs()` in, `probability` out);
        other keys are parts that `candidates` reuses (saved as `<key>.onnx` too)."""
        ...

    def parity_rows(self, fitted: Any, base: pd.DataFrame) -> pd.DataFrame:
        """Extra rows on which export checks parity (e.g. values at every split threshold); may be empty."""
        ...

    def candidates(self, ctx: CandidateContext) -> dict[str, Candidate]:
        """The optimized graphs to measure, evaluate and gate, named `<family>_<variant>`."""
        ...


class SklearnPersistence:
    """`save` / `load` / `predict` of a family whose fitted model is one scikit-learn pipeline over the
    raw feature frame (`dataset.features`) (joblib stays in models/native: serving only ever sees ONNX graphs).

    The family class sets `name`; mixing this in is the whole of its persistence.
    """

    name: str

    def save(self, fitted: Any, folder: Path) -> None:
        import joblib

        joblib.dump(fitted, folder / f"{self.name}.joblib")

    def load(self, folder: Path) -> Any:
        import joblib

        return joblib.load(folder / f"{self.name}.joblib")

    def predict(self, fitted: Any, frame: pd.DataFrame) -> np.ndarray:
        # the columns the pipeline was fitted on, in that order (scikit-learn records them)
        return fitted.predict_proba(frame[list(fitted.feature_names_in_)])[:, 1]
