"""Whole experiments built on the library: the demo, attention studies and distillation, with their reports."""
