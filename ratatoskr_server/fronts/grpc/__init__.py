"""The gRPC front: protobuf conversion, the status table, abort; no decisions."""
