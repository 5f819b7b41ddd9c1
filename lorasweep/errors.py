"""The one error type a user sees: a field, its value, and what is allowed."""


class ConfigError(ValueError):
    """Bad input, reported as one line and exit code 2."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")

    def __reduce__(self):  # crosses process boundaries (Ray workers) intact
        return ConfigError, (self.field, self.value, self.allowed)
