"""Clients of the sonate server."""
