"""The event contract: Avro schemas, their catalogue, the wire-format codec and validation."""

from schemas.catalogue import Catalogue, SchemaVersion, load_catalogue
from schemas.codec import DecodeError, WireCodec
from schemas.validation import EventValidationError, normalize_event

__all__ = [
    "Catalogue",
    "DecodeError",
    "EventValidationError",
    "SchemaVersion",
    "WireCodec",
    "load_catalogue",
    "normalize_event",
]
