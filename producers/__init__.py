"""Ways into the ledger: the producer SDK, file ingest, the HTTP gateway and the simulator."""

from producers.sdk import DeliveryError, LedgerProducer, NotStoredError

__all__ = ["DeliveryError", "LedgerProducer", "NotStoredError"]
