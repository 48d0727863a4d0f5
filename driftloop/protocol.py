"""The server's scoring routes, named once.

The server registers its scoring handlers at these paths and labels its request metrics with
them; the release plane counts 5xx answers of exactly these paths against a canary. A scoring
route added to the server but missing here would escape the canary's error count, so both read
this tuple.
"""

from __future__ import annotations

V2_INFER = "/v2/models/{name}/infer"
V2_VERSION_INFER = "/v2/models/{name}/versions/{version}/infer"
V1_PREDICT = "/v1/models/{name}:predict"
V1_EXPLAIN = "/v1/models/{name}:explain"  # feature attributions (serving/explain.py); not a scoring endpoint

SCORING_ENDPOINTS: tuple[str, ...] = (V2_INFER, V2_VERSION_INFER, V1_PREDICT)
