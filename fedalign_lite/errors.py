"""The error types fedalign-lite raises at its edges.

Every message names the offending field (or asset, or file) and what is allowed, so a user can fix
the input without reading the source. All inherit from :class:`FedAlignError`, and each also
inherits the builtin a caller would naturally catch (``ValueError`` for bad values, ...).
"""


class FedAlignError(Exception):
    """Base class of every error fedalign-lite raises on purpose."""


class ConfigError(FedAlignError, ValueError):
    """A config or preset field holds a value outside its allowed set or range."""


class DataError(FedAlignError, ValueError):
    """A data file is missing, empty, malformed, or lacks a required column."""


class AssetNotFoundError(FedAlignError, FileNotFoundError):
    """A named offline asset is not installed; the message gives the command that installs it."""


class CheckpointError(FedAlignError, RuntimeError):
    """A checkpoint is corrupted, truncated, or was written by a run with a different config."""


class AllClientsFailedError(FedAlignError, RuntimeError):
    """Every sampled client of a round raised or returned non-finite values."""


class PayloadError(FedAlignError, ValueError):
    """A client's message does not have the keys, shapes, dtypes or values the algorithm expects."""


def check_choice(field: str, value, allowed) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed; choose one of {allowed}")


def check_positive(field: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a positive (or non-negative) number of the right type."""
    kind = "integer" if integer else "number"
    article = "an" if integer else "a"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{field} must be {article} {kind}, got {value!r} ({type(value).__name__})")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{field} must be {article} {kind} {bound}, got {value!r}")


def check_probability_vector(field: str, values, *, length: int | None = None, tol: float = 1e-6) -> None:
    """Raise ConfigError unless ``values`` is non-negative, sums to 1, and has ``length`` entries."""
    values = [float(v) for v in values]
    if length is not None and len(values) != length:
        raise ConfigError(f"{field} must have {length} entries (one per objective), got {len(values)}")
    if any(v < 0 or v != v for v in values):
        raise ConfigError(f"{field} entries must be >= 0, got {values}")
    if abs(sum(values) - 1.0) > tol:
        raise ConfigError(f"{field} must sum to 1 (a point on the simplex), got sum {sum(values):.6g}")
