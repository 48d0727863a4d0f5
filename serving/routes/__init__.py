"""HTTP routes grouped by concern; each module's `router(plane)` returns an `APIRouter` over a `DataPlane`."""
