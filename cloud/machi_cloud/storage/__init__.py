"""Where the cloud keeps readings: one abstract interface, one module per backend."""

from .base import (
    BatchResult,
    Cursor,
    DeviceSummary,
    LatestValue,
    ReadingQuery,
    ReadingRow,
    Storage,
    StorageStats,
)

__all__ = [
    "BatchResult",
    "Cursor",
    "DeviceSummary",
    "LatestValue",
    "ReadingQuery",
    "ReadingRow",
    "Storage",
    "StorageStats",
]
