"""Reporting: writers of the output contract, the HTML report, figures, narrative and longitudinal comparison."""
