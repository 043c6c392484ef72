"""The package version, in a leaf module: the telemetry leaf reports it without the facade."""

__version__ = "0.1.0"
