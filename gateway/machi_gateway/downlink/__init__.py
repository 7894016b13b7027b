"""Downlink: commands from the cloud to the nodes, and their states back (contracts C2/C3)."""
