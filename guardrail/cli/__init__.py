"""The ``guardrail`` command: check, demo, proxy."""
