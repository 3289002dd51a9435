"""Analysis: collect run records, fit the unified QAT scaling law, write reports."""
