"""Benchmarks: each module times the product's own code paths and prints a table and one JSON line.

Outside the stage packages on purpose (timm's layout): a benchmark may import every stage,
the stages never import a benchmark.
"""
