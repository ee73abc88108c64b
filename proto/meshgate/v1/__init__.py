"""Generated protobuf/gRPC code for meshgate.v1 (python proto/generate.py); never edited by hand."""
