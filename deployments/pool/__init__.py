"""Model pools: one shared deployment whose replicas load registered models on demand (Serve's
multiplexing by model id) and evict the least recently used ones under a memory budget."""
