"""How long the integration tests wait for a signal before they fail: bounds on a hang, never measurements.

A test waits for a signal (a ready line, a log line, a message, a committed offset, a row
count) and goes on the moment it is there; these bounds only turn a hang into a failure.
They are generous because a busy machine is slow, not broken.
"""

BOUND_S = 300.0
"""The longest wait for a message, a log line, a row or a commit."""

READY_BOUND_S = 600.0
"""The longest wait for a worker's ready line: it loads TensorFlow first (2.5 min with a busy core beside it)."""

FAULT_BOUND_S = 600.0
"""The longest wait for a whole stream's answers (thousands of phrases, through an outage)."""

POLL_S = 0.5
"""How often a wait looks again."""
