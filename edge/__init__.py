"""Everything a person or merchant touches: the HTTP API and the `paygate` command line.

Owns authentication, rate limits, request validation, idempotency keys at the
door, routing to shards with coalescing, the risk check of each payment against
the risk actor's table, OpenAPI, metrics, and the edge worker processes. May
import engine types, the journal client and the actors' Ray-free client modules
(connector wire, risk table); never reaches into a shard's state except through
the shard wire, and never waits on Ray.
"""
