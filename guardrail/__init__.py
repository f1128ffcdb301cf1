"""guardrail: screen chat requests in parallel with the app, hold the answer, release or refuse.

Errors a user meets:

    PolicyError  - a policy file that cannot be used (file, line, field and why)
    BadRequest   - a guarded request that cannot be screened (answered 4xx, never passed on)
    JudgeError   - a judge that gave no verdict (the policy's fail mode decides)
"""

from guardrail.adapters import BadRequest
from guardrail.decide.decision import DECISIONS, Decision
from guardrail.decide.guard import Guard
from guardrail.flow.middleware import GuardrailMiddleware
from guardrail.judges.base import Judge, JudgeError, JudgeFailure, Verdict
from guardrail.policy.errors import PolicyError
from guardrail.policy.models import Policy, load_policy, parse_policy

__all__ = [
    "DECISIONS",
    "BadRequest",
    "Decision",
    "Guard",
    "GuardrailMiddleware",
    "Judge",
    "JudgeError",
    "JudgeFailure",
    "Policy",
    "PolicyError",
    "Verdict",
    "load_policy",
    "parse_policy",
]
