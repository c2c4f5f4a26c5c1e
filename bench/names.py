"""Request names shared by the locustfile and the runner that reads locust's CSV (which must not import locust)."""

SETUP = "[setup]"
BATCH = "[batch]"
CAPTURE = "POST /v1/payments/{id}/capture"
