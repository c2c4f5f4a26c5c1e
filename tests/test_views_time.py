"""engine.views.parse_time_ns: the `at`, `created_gte` and `created_lt` query times, to the exact nanosecond."""

import pytest

from engine.views import parse_time_ns, time_of

SECOND = 1_000_000_000
DECEMBER_3 = 1_796_290_567 * SECOND  # 2026-12-03T09:36:07Z


@pytest.mark.parametrize("text, nanoseconds", [
    ("2026-12-03T09:36:07.201Z", DECEMBER_3 + 201_000_000),
    ("2026-12-03T09:36:07.906Z", DECEMBER_3 + 906_000_000),
    ("2026-12-03T09:36:07.123456789Z", DECEMBER_3 + 123_456_789),
    ("2026-12-03T09:36:07.1234567891Z", DECEMBER_3 + 123_456_789),  # beyond nanoseconds: truncated
    ("2026-12-03T16:36:07.201+07:00", DECEMBER_3 + 201_000_000),
    ("2026-12-03T09:06:07.5-00:30", DECEMBER_3 + 500_000_000),
    ("2026-12-03 09:36:07z", DECEMBER_3),
    ("2026-12-03T09:36:07", DECEMBER_3),  # no offset: UTC
    ("1796290567", DECEMBER_3),
    (" 1796290567 ", DECEMBER_3),
    ("0", 0),
    ("1970-01-01T00:00:00Z", 0),
    ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
])
def test_times_parse_to_exact_nanoseconds(text, nanoseconds):
    assert parse_time_ns(text) == nanoseconds


@pytest.mark.parametrize("text", ["2026-12-03T09:36:07.201Z", "2026-12-03T09:36:07.906Z", "2026-12-03T09:36:07.999Z",
                                  "2026-12-03T09:36:07.001Z"])
def test_a_time_in_milliseconds_comes_back_as_it_was_sent(text):
    assert time_of(parse_time_ns(text)) == text


@pytest.mark.parametrize("text", [
    "", "yesterday", "1.5", "-1", "8589934592", "1969-12-31T23:59:59.999999999Z", "2262-04-11T23:47:16.854775808Z",
    "2026-02-30T00:00:00Z", "2026-12-03T24:00:00Z", "2026-12-03T09:36:07+24:00", "2026-12-03T09:36:07.Z",
    "2026-12-03T09:36Z", "2026-12-03", "２０２６-12-03T09:36:07Z", "2026-12-03T09:36:07Z trailing",
])
def test_anything_else_is_refused(text):
    assert parse_time_ns(text) is None
