"""The local AWS IoT Jobs service: jobs model over SQLite, REST control plane, MQTT data plane."""

from .service import Service

__all__ = ["Service"]
