"""What every process shares and nothing of ours is imported by: logging set-up (later settings, the envelope)."""
