"""Numpy over what a transfer recorded: traces, loss runs, delay, reordering, time series."""
