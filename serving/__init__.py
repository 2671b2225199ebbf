"""Export, ScaNN retrieval, re-ranking, CLI and HTTP service. The only layer that knows about users' tools."""
