"""User-facing errors.

Every error a user can cause (bad params, bad data, a missing path) is a `DriftloopError`: entry
points print its message as one line and exit non-zero, never a traceback.
"""


class DriftloopError(Exception):
    """An error caused by input the user controls; its message names the thing and the fix."""


class ParamsError(DriftloopError):
    """`params.yaml` is missing a section, has an unknown key, or a value of the wrong type."""


class DataError(DriftloopError):
    """The data source is missing, empty for the window, or lacks columns of the expected type."""


class ValidationFailed(DriftloopError):
    """One or more expectations of the suite failed on the snapshot."""


class ParityError(DriftloopError):
    """An exported ONNX graph disagrees with its native model beyond the tolerance."""


class GateRejected(DriftloopError):
    """No candidate passed every gate rule."""


class PackageError(DriftloopError):
    """A model package is incomplete, tampered with, or unsafe to load."""
