"""Durability and replication: the shard process around one engine.

Owns the sequencer, the LMDB write-ahead journal (group commit, checksums, hash
chain), snapshots, recovery and replay, replication to a replica over nng,
promotion with epochs, the shard wire protocol, and the client that routes to
shards. May import engine, lmdb, pynng and msgspec; never edge or actors.
"""
