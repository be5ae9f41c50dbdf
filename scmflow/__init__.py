"""scmflow: one-command, resumable, auditable upgrade and rollback of a SequoiaCM cluster."""

__version__ = "0.1.0"
