"""Reliability and security suite: crashes, server faults, concurrency,
stateful property tests, hostile input and a leak audit, on real clusters."""
