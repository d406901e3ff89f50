"""Stand-ins for the outside world, for development and tests: the sandbox partner."""
