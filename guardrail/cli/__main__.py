"""``python -m guardrail.cli``."""

from guardrail.cli.main import main

raise SystemExit(main())
