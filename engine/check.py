"""The engine's always-on invariant check: unlike `assert`, `python -O` cannot remove it."""


class InvariantBroken(RuntimeError):
    """An invariant of our own code does not hold: a bug, never a refusal of input."""


def check(condition: bool, message: str = "invariant broken") -> None:
    """Raise InvariantBroken unless `condition`; build costly messages only where the check is off the hot path."""
    if not condition:
        raise InvariantBroken(message)
