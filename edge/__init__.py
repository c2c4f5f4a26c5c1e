"""Everything a person or merchant touches: the HTTP API and the `paygate` command line.

Owns authentication, rate limits, request validation, idempotency keys at the
door, routing to shards with coalescing, OpenAPI, metrics, and the edge worker
processes. May import engine types and the journal client; never reaches into
a shard's state except through the shard wire.
"""
