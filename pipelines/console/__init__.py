"""What the jobs print: plan lines, progress with rate and ETA, summaries; Ray's own output kept off the terminal."""
