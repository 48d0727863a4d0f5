"""The request bodies as pydantic models (the OpenAPI document is generated from them), the
patterns they share with the server, the per-request limits, and `parse_model` for small bodies.

Rules and statuses are described in `serving.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from serving.wire import RequestError, check_duplicate_keys, count_keys, loads

M = TypeVar("M", bound=BaseModel)

MAX_REQUEST_ID = 128
# A request id (the `x-request-id` header or a v2 body's `id`): 1..128 printable ASCII characters,
# not starting or ending with a space (HTTP strips those from header values, so an id that has
# them could not travel in the header unchanged). One regex, the same in ECMA-262 (the OpenAPI
# document), the Rust regex crate (pydantic) and Python `re` (`serving.http.request_id_of`).
REQUEST_ID_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
# A model or version folder name as the repository takes it: no "/", not starting with "."
# (`serving.repository.ModelRepository._folder`).
NAME_PATTERN = r"^[^/.][^/]*$"
# The smallest magnitude that rounds to infinity in float32 (round half to even; FP32's largest
# value has an odd mantissa): below it a number is finite as FP32, as the large-batch path's
# `astype(float32)` + `isfinite` has it, so the verdict does not depend on the batch size.
FP32_ROUNDS_TO_INF = 2.0**128 - 2.0**103


def _json_integer(value: Any) -> Any:
    """An integral JSON number (7 or 7.0, as JSON Schema's `integer`) as an int; anything else as is."""
    if type(value) is float and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


# The request models are strict (no "5" -> 5, no true -> 1): what the OpenAPI document calls
# invalid, the server refuses. Integers are the one exception, as JSON Schema has it: 7.0 is 7.
# A tensor dimension: at most 2**53, where JSON numbers stop being exact integers (the row limit,
# far below it, is a 413 later).
Dimension = Annotated[int, Field(le=2**53), BeforeValidator(_json_integer)]


@dataclass(frozen=True)
class Limits:
    """Per-request limits: rows and characters per BYTES value."""

    max_rows: int = 10_000
    max_string_length: int = 64


class RequestInput(BaseModel):
    """One named input tensor of a v2 request (`data` absent when sent as binary)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    shape: list[Dimension] = Field(min_length=1, max_length=4)
    datatype: str = Field(max_length=16)
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    """A requested output of a v2 request (only `probability` exists)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The v2 `POST .../infer` body: every field the Open Inference Protocol defines, no others.

    `model_name` / `model_version` are optional (KServe's client sends `model_name`); when given
    they must agree with the URL.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID, pattern=REQUEST_ID_PATTERN)
    model_name: str | None = Field(None, max_length=256)
    model_version: str | None = Field(None, max_length=64)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    def binary_output(self) -> bool:
        """True when the client asked for the output as binary (`binary_data_output`, or per output)."""
        if self.parameters and self.parameters.get("binary_data_output") is True:
            return True
        return any(o.parameters and o.parameters.get("binary_data") is True for o in self.outputs or ())


class RecordsRequest(BaseModel):
    """The records body `POST /v1/models/{name}:predict`: one JSON object per row."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instances: list[dict[str, Any]] = Field(min_length=1)


class LoadParameters(BaseModel):
    """`parameters` of a load / unload body: the version folder (other keys are ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Annotated[str, StringConstraints(min_length=1, pattern=NAME_PATTERN)] | Annotated[
        int, Field(ge=0), BeforeValidator(_json_integer)
    ] | None = Field(None, description="version folder; default the latest on disk (load) or every version (unload)")


class LoadRequest(BaseModel):
    """Body of `POST /v2/repository/models/{name}/load` (optional): which version to load."""

    model_config = ConfigDict(extra="forbid", strict=True)

    parameters: LoadParameters | None = None


class TrafficRequest(BaseModel):
    """Body of `POST /v2/repository/models/{name}/traffic`.

    `weights` are percentages per version: each finite and >= 0, summing to 100 (versions left
    out get 0), so `{"1": 50}` is refused instead of silently meaning 100%. Null returns to "the
    latest loaded version takes 100%".
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    weights: dict[str, float] | None = Field(
        description="percent of traffic per version, summing to 100; null = the latest loaded version takes all"
    )


class IndexRequest(BaseModel):
    """Body of `POST /v2/repository/index` (optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ready: bool = False


# ---------------------------------------------------------------------------- JSON
def _pydantic_error(exc: ValidationError) -> RequestError:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return RequestError(422, "invalid request body: " + "; ".join(parts) + more)


def parse_model(model: type[M], body: bytes) -> M:
    """Validate raw JSON bytes into `model`, refusing duplicate keys.

    Raises:
        RequestError: 422 with the first errors' locations and messages; 400 naming a duplicate key.
    """
    obj = loads(body)
    try:
        result = model.model_validate(obj)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    keys, colons = count_keys(obj)
    check_duplicate_keys(body, keys, colons)
    return result
