"""Small helpers shared by every layer of the project (the lowest layer: imports nothing of ours)."""
