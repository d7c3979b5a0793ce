"""The package version, in a module of its own so that the bottom layers (the wire
dialect's ``User-Agent``) can read it without importing the public API above them."""

__version__ = "0.1.0"
