"""The gRPC edge: protobuf in, domain calls, protobuf out; errors become status codes here."""
