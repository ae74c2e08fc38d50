"""The arithmetic example: a chain whose every step's result is a partial result."""
