"""Example stats service: per-room message and user counts, live and on request.

Run it with ``svc run services.example_stats --layer nats://localhost:4222``.
"""

from .consumers import service

__all__ = ["service"]
