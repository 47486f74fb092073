"""Remotior Sensus scripts run unchanged, but for their import, against a live server."""
