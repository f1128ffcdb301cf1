"""``guardrail eval``: measure a policy on labelled data before it meets users.

data (rows in) -> targets (one item through a ``Guard``, or a served app) ->
run (bounded concurrency, rate, retries, stop) -> summary and compare (the
numbers, with stats) -> terminal, page (HTML with charts), JSON. cost prices
the LLM judges' tokens; command wires it into the ``guardrail`` CLI.
"""
