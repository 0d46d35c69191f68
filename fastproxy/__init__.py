"""fastproxy: a multiprocess, zero-copy TCP/HTTP reverse and forward proxy."""

__version__ = "0.1.0"
