"""The xbt version, in one place: modules that record it import it from here, never from the package root."""

__version__ = "0.1.0"
