"""The policy file: pydantic models, loading with line marks, cross-field checks, errors."""
