"""cxledger: an event-sourced customer-interaction ledger (CLI, configuration, local stack)."""

__version__ = "0.1.0"
