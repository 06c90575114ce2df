"""Faust application and the pure logic its agents call."""
