"""Generated protobuf and gRPC modules of the Flotilla API (``make proto``).

The sources are ``proto/flotilla/v1/*.proto``; nothing here is edited by hand.
"""
