"""summary stage: every evaluated run in one table, figures and an HTML report."""
