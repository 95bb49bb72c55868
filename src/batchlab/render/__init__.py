"""What a person reads: tables, the HTML report, plots, trainer settings."""
