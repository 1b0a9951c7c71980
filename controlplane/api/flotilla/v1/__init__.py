"""Generated code for proto package flotilla.v1 (``make proto``)."""
