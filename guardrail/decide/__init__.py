"""Deciding: screens raced per request, the panel and its vote, the decision."""
