"""The mcdropout gRPC server."""
