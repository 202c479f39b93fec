"""Generated gRPC/protobuf code for the slaprobe wire contract (``make proto``)."""
