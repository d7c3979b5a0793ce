"""Client middleware: OpenAI wrapping, candidate cache and selection, rollouts, rewards."""
