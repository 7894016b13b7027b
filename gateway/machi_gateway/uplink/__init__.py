"""Uplinks: how batches of readings reach the cloud."""
