"""Benchmarks that print their figures (medians), a RESULT line, and CSV under bench/out/.

May import everything; nothing imports bench.
"""
