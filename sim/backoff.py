"""Restarting crashed programs the way kubelet restarts a crashed container: after a delay that doubles with
each crash in a row (1 s, 2 s, 4 s ... capped at 30 s), the count reset once the program has stayed up for a
while. Local mode's supervisor uses it for its children and for the upstream control plane's programs."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "RESTART_INITIAL_SECONDS",
    "RESTART_MAX_SECONDS",
    "RESTART_RESET_AFTER_SECONDS",
    "CrashLoop",
    "restart_delay",
]

RESTART_INITIAL_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_AFTER_SECONDS = 60.0


def restart_delay(crashes_in_a_row: int) -> float:
    """Seconds to wait before restarting a child that has now crashed `crashes_in_a_row` times (>= 1)."""
    return min(RESTART_MAX_SECONDS, RESTART_INITIAL_SECONDS * 2.0 ** max(0, crashes_in_a_row - 1))


@dataclass
class CrashLoop:
    """When a stateless program found dead may be relaunched: at once after a crash that followed a good run
    (a control-plane program killed once comes back without delay), then with `restart_delay` for every
    further crash in a row. A run of `RESTART_RESET_AFTER_SECONDS` or more ends the row."""

    crashes_in_a_row: int = 0
    started_at: float | None = None
    due: float | None = None  # when the relaunch of the program found dead may happen

    def relaunch_now(self, now: float) -> bool:
        """Called for a program found dead at monotonic time `now`: whether to relaunch it on this call."""
        if self.due is None:
            if self.started_at is not None and now - self.started_at >= RESTART_RESET_AFTER_SECONDS:
                self.crashes_in_a_row = 0
            self.crashes_in_a_row += 1
            delay = 0.0 if self.crashes_in_a_row == 1 else restart_delay(self.crashes_in_a_row - 1)
            self.due = now + delay
        if now < self.due:
            return False
        self.due = None
        self.started_at = now
        return True
