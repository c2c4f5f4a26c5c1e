"""Schemathesis against a live `paygate serve`: every operation of /openapi.json gets generated requests (schema-valid
and schema-breaking), and every response must hold to the contract of API.md and the document:

- no 5xx, ever;
- a documented status, a documented content type, and a body matching the schema documented for that status;
- every 4xx is {"error": {"type", "code", "message", "param"}}, its type the one API.md gives for the status;
- every response carries Request-Id.

Requests that once got a 500 stay in REGRESSIONS and must keep getting documented answers.

The operations are pytest parameters rather than `schemathesis.pytest.from_fixture(...).parametrize()` subtests:
that lazy loader (schemathesis 4.32.5) reads `request.node._nodeid`, which pytest 9.2 no longer has, and subtests
cannot carry a per-operation xfail.
"""

import collections
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from edge_harness import Server

MAX_EXAMPLES = 15  # per operation and generation mode (schema-valid, schema-breaking)
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])
ADMIN_ONLY = {"create_merchant", "update_merchant", "create_dashboard_user", "ledger_check", "create_blocklist_entry",
              "list_blocklist", "delete_blocklist_entry", "create_adjustment"}
# API.md: the error type for each 4xx status.
ERROR_TYPES = {400: {"invalid_request_error"}, 401: {"authentication_error"}, 402: {"card_error", "balance_error"},
               403: {"permission_error"}, 404: {"invalid_request_error"}, 405: {"invalid_request_error"},
               409: {"invalid_request_error"}, 413: {"invalid_request_error"}, 415: {"invalid_request_error"},
               422: {"invalid_request_error"}, 429: {"rate_limit_error"}}
OPERATIONS = [
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/admin/ledger_check"),
    ("GET", "/openapi.json"), ("GET", "/.well-known/jwks.json"), ("POST", "/oauth/token"), ("POST", "/v1/auth/login"),
    ("POST", "/v1/merchants"), ("GET", "/v1/merchants/me"), ("GET", "/v1/merchants/{id}"),
    ("PATCH", "/v1/merchants/{id}"), ("POST", "/v1/merchants/{id}/sub_accounts"),
    ("POST", "/v1/merchants/{id}/dashboard_users"), ("POST", "/v1/merchants/{id}/api_keys"),
    ("GET", "/v1/merchants/{id}/api_keys"), ("POST", "/v1/orders"), ("GET", "/v1/orders"),
    ("GET", "/v1/orders/{id}"), ("PATCH", "/v1/orders/{id}"), ("DELETE", "/v1/orders/{id}"), ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/{id}"), ("GET", "/v1/accounts/{id}/transfers"), ("GET", "/v1/accounts/{id}/balances"),
    ("POST", "/v1/transfers"), ("GET", "/v1/transfers/{id}"), ("POST", "/v1/customers"), ("GET", "/v1/customers/{id}"),
    ("POST", "/v1/customers/{id}/deposits"), ("POST", "/v1/customers/{id}/withdrawals"),
    ("POST", "/v1/customers/{id}/adjustments"), ("GET", "/v1/deposits/{id}"), ("GET", "/v1/withdrawals/{id}"),
    ("GET", "/v1/qr/deposits/{id}.png"),
    ("GET", "/v1/customers/{id}/wallet"), ("POST", "/v1/payments"), ("GET", "/v1/payments"),
    ("GET", "/v1/payments/{id}"), ("POST", "/v1/payments/{id}/capture"), ("POST", "/v1/payments/{id}/cancel"),
    ("POST", "/v1/refunds"), ("GET", "/v1/refunds/{id}"), ("POST", "/v1/psp/{provider}/webhook"),
    ("POST", "/v1/qr/dynamic"), ("POST", "/v1/qr/static"), ("GET", "/v1/qr/orders/{id}.png"),
    ("GET", "/v1/qr/payments/{id}.png"),
    ("GET", "/v1/qr/merchants/{id}.png"), ("POST", "/v1/payouts"), ("GET", "/v1/payouts/{id}"),
    ("POST", "/v1/risk/blocklist"), ("GET", "/v1/risk/blocklist"), ("DELETE", "/v1/risk/blocklist/{id}"),
    ("GET", "/v1/events"), ("GET", "/v1/events/{id}"), ("POST", "/v1/events/{id}/redeliver"),
    ("GET", "/v1/webhook_deliveries"), ("POST", "/v1/webhook_deliveries/replay"), ("GET", "/v1/invoices"),
    ("GET", "/v1/invoices/{id}"), ("GET", "/v1/invoices/{id}.pdf"),
]

# Requests that once got a 500 (each: what went wrong, and requests as schemathesis Case arguments): kept as
# regression cases that must now get documented 4xx answers.
REGRESSIONS = {
    "undecodable-content-encoding": (
        "500 internal_error for a body whose Content-Encoding (gzip, deflate, br) does not decode, on every route that "
        "reads a body: request.read() raises aiohttp's RequestPayloadError (an HttpProcessingError, not a "
        "web.HTTPException); the middleware now maps it to 400.",
        [("POST", "/v1/orders", {"body": {"name": "Coffee", "amount": 1999, "currency": "usd"},
                                 "headers": {"Content-Encoding": "gzip"}}),
         ("POST", "/oauth/token", {"body": {"grant_type": "client_credentials", "client_id": "cli_mer_x",
                                            "client_secret": "x"}, "headers": {"Content-Encoding": "gzip"}})]),
    "oauth-token-unreadable-form": (
        "500 internal_error from POST /oauth/token when the form cannot be parsed: oauth_token (edge/app.py) calls "
        "request.post(), which raises ValueError for multipart without its boundary, UnicodeDecodeError for "
        "non-UTF-8 form bytes and LookupError for an unknown charset; now 400.",
        [("POST", "/oauth/token", {"body": b"grant_type=client_credentials", "media_type": "application/octet-stream",
                                   "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
         ("POST", "/oauth/token", {"body": b"grant_type=\xff", "media_type": "application/octet-stream",
                                   "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
         ("POST", "/oauth/token", {"body": {"grant_type": "client_credentials", "client_id": "cli_mer_x",
                                            "client_secret": "x"},
                                   "headers": {"Content-Type": "application/x-www-form-urlencoded; charset=x"}})]),
}
REQUESTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("contract"), workers=1, extra=("--order-ip-limit", "1000000"))
    try:
        yield server.start()
    finally:
        server.stop()
        if REQUESTS:  # shown with -s or -rA
            print(f"\nopenapi contract: {sum(sum(c.values()) for c in REQUESTS.values())} requests, {len(REQUESTS)} "
                  "operations")
            for label, statuses in sorted(REQUESTS.items()):
                print(f"  {label}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json", timeout=30)


def auth_headers(operation, server: Server) -> dict[str, str]:
    admin = operation.definition.raw.get("operationId") in ADMIN_ONLY
    return {"Authorization": f"Bearer {server.admin_token if admin else server.demo_key}"}


def request_id_present(ctx, response, case):
    """Every response carries Request-Id."""
    assert response.headers.get("request-id", [""])[0], f"{response.status_code} without a Request-Id header"


def error_shape(ctx, response, case):
    """A 4xx is {"error": {"type", "code", "message", "param"}}, its type the one API.md gives for the status."""
    status = response.status_code
    if not 400 <= status < 500:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{status} body is not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"{status} body is not {{'error': ...}}: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"type", "code", "message", "param"}, \
        f"{status} error object is {error!r}"
    assert all(isinstance(error[name], str) and error[name] for name in ("type", "code", "message")), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["type"] in ERROR_TYPES.get(status, {"invalid_request_error"}), \
        f"{status} has error type {error['type']!r}"
    if status == 429:
        assert response.headers.get("retry-after"), "429 without Retry-After"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, error_shape, request_id_present]


def call_and_check(case, server: Server) -> None:
    headers = auth_headers(case.operation, server)
    response = case.call(headers=headers, timeout=30)
    REQUESTS[case.operation.label][response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_the_document_lists_exactly_the_operations_tested_here(api_schema):
    documented = {(method.upper(), path) for path, methods in api_schema.raw_schema["paths"].items()
                  for method in methods}
    assert documented == set(OPERATIONS)


def test_every_path_parameter_is_a_name_in_braces_of_its_path(api_schema):
    for path, methods in api_schema.raw_schema["paths"].items():
        for method, operation in methods.items():
            named = {f"{{{parameter['name']}}}" for parameter in operation["parameters"] if parameter["in"] == "path"}
            assert named == set(re.findall(r"\{[^}]*\}", path)), (method, path, named)


def test_the_transfer_array_documents_its_limits(api_schema):
    body = api_schema.raw_schema["paths"]["/v1/transfers"]["post"]["requestBody"]["content"]["application/json"]
    arrays = [schema for schema in body["schema"]["anyOf"] if schema.get("type") == "array"]
    assert [(array["minItems"], array["maxItems"]) for array in arrays] == [(1, 8190)]


@pytest.mark.parametrize("method, path", [pytest.param(method, path, id=f"{method} {path}") for method, path in OPERATIONS])
def test_generated_requests_get_documented_responses(api_schema, server, method, path):
    operation = api_schema[path][method]
    raw = operation.definition.raw
    # Without parameters, body or credentials there is nothing a request could break (Hypothesis: Unsatisfiable).
    breakable = bool(raw.get("parameters") or raw.get("requestBody") or raw.get("security"))
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if breakable else (GenerationMode.POSITIVE,):

        @SETTINGS
        @given(case=operation.as_strategy(mode))
        def generated(case):
            call_and_check(case, server)

        generated()


@pytest.mark.parametrize("method, path, arguments", [
    pytest.param(method, path, arguments, id=f"{name}-{number}: {method} {path}")
    for name, (_, requests) in REGRESSIONS.items() for number, (method, path, arguments) in enumerate(requests, 1)])
def test_requests_that_once_failed_get_documented_answers(api_schema, server, method, path, arguments):
    call_and_check(api_schema[path][method].Case(**arguments), server)
