"""Benchmarks of scmflow against plain OpenSSH (see README.md here)."""
