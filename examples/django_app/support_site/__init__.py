"""A support-intent classifier on Django, with synth-middleware."""
