"""TCP vs UDP under one impairment: the plan (pure), running it, its document and plots."""
