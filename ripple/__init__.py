"""Ripple: streaming attribution for creator referral programs."""

__version__ = "0.1.0"
