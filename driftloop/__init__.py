"""driftloop: a closed MLOps loop from a DVC-tracked snapshot to a self-correcting ONNX Runtime service."""

__version__ = "0.1.0"
