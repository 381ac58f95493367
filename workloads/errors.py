"""The one error type for bad user input, shared by every package.

The command line turns a ConfigError into one line on stderr and exit code 2, so the message must
name the field, the value and what is allowed.
"""


class ConfigError(ValueError):
    """Bad user input: a field, the value given, and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")


def require_positive_int(field: str, value: object) -> int:
    """Return value as an int if it is a positive integer (bools refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(field, value, "a positive integer")
    return value


def require_positive_float(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(field, value, "a positive number")
    return float(value)


def check_known_fields(where: str, data: dict, known: set[str]) -> None:
    """Refuse unknown keys in a YAML mapping (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise ConfigError(where, data, "a mapping of fields")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], "one of " + ", ".join(sorted(known)))
