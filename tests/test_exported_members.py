"""The public API is what ``__all__`` says, and every name in it exists."""

import guardrail


def test_all_exports_exist() -> None:
    assert sorted(guardrail.__all__) == sorted(set(guardrail.__all__))
    for name in guardrail.__all__:
        assert hasattr(guardrail, name), name


def test_public_names_are_exported() -> None:
    public = {n for n in vars(guardrail) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(guardrail, n)).__name__ == "module"}
    assert public - modules == set(guardrail.__all__)
