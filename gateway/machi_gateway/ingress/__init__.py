"""Ingress adapters: each turns one radio/transport into Readings for the core."""
