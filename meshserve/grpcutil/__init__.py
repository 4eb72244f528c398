"""gRPC plumbing shared by every service: server set-up, channel options, announce files."""
