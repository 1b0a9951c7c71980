"""Tiny workloads the tests run through the drivers."""
