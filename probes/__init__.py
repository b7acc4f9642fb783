"""Scripted probe experiments: every view of the app as a command that writes figures and numbers to disk."""
