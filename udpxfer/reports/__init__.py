"""What a user reads: JSON reports, HTML pages, plots, the progress stream."""
