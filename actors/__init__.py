"""Ray actors beside the core: risk, PSP connectors, notifications, reconciliation, the shards' health watch.

They read committed entries by sequence number with a durable cursor and change
money state only by submitting commands. May import engine types, the journal
client and ray; never the edge.
"""
