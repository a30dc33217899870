"""Recipe → offsets → baked variant checkpoints, and their verification."""
