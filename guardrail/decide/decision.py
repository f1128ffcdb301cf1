"""The decisions a guarded request can end in, named once.

Every guarded request ends in exactly one of these, so a block rate computed
from them adds up.
"""

from __future__ import annotations

from typing import Literal

Decision = Literal[
    "allowed",  # every screen passed
    "blocked",  # a screen flagged (or the panel voted to block)
    "flagged_allowed",  # a screen flagged, and the panel overturned it or the policy only logs
    "error_allowed",  # a judge failed and the policy fails open
    "error_blocked",  # a judge failed and the policy fails closed
    "rejected",  # the request could not be screened (malformed, too large): refused unscreened
    "abandoned",  # the client left before a decision
    "app_error",  # screened, but the app (or the proxied upstream) failed to answer
    "redacted",  # every screen passed once the personal data found was redacted (on_flag: redact)
]

DECISIONS: tuple[Decision, ...] = (
    "allowed",
    "blocked",
    "flagged_allowed",
    "error_allowed",
    "error_blocked",
    "rejected",
    "abandoned",
    "app_error",
    "redacted",
)

REFUSING: frozenset[Decision] = frozenset({"blocked", "error_blocked"})
