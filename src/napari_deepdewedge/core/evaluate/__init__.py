"""Measuring results: metrics and the synthetic phantom."""
