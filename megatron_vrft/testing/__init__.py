"""Helpers for the project's tests and demos (tiny models, multi-process runs on gloo)."""
