"""Self-interpretation of attention: maps, text descriptions, head functions, self-explanations and their scores."""
