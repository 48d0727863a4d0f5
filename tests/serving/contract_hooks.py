"""Schemathesis hooks of the contract runs: how to generate a body of the binary tensor extension.

Loaded by `tests/serving/test_openapi_contract.py` (`runpy`) and by `make fuzz` (the
`SCHEMATHESIS_HOOKS` environment variable names this file).

Where the server advertises the binary tensor extension, the document declares
`application/octet-stream` on infer. Random bytes are no frame, and no schema says what one is, so
the generated binary bodies are frames: a JSON request with no binary tensor (without
`Inference-Header-Content-Length` the whole body is the JSON part), whole or with some inputs.
"""

from __future__ import annotations

import orjson
import schemathesis
from hypothesis import strategies as st

from serving.openapi import BINARY, example_bodies
from serving.testing import TEST_INPUTS, synthetic_rows
from serving.validation import InferenceRequest

V2_EXAMPLE = example_bodies(TEST_INPUTS, synthetic_rows(1).iloc[0].to_dict())[InferenceRequest]
N_INPUTS = len(V2_EXAMPLE["inputs"])

BINARY_BODIES = st.builds(
    lambda n, rid: orjson.dumps({**V2_EXAMPLE, "id": rid, "inputs": V2_EXAMPLE["inputs"][:n]}),
    st.just(N_INPUTS) | st.integers(1, N_INPUTS),
    st.from_regex(r"\A[a-z0-9-]{1,32}\Z"),
)
schemathesis.openapi.media_type(BINARY, BINARY_BODIES)
