"""The live status streams' bounds: per worker, and per client address so one address cannot take them all."""

import contextlib

import pytest
from aiohttp import web

from edge.errors import ApiError
from edge.pages.live import MAX_STREAMS_PER_CLIENT, LiveStatus


def test_one_address_holds_a_bounded_share_of_the_streams_and_gives_them_back():
    live = LiveStatus(web.Application())
    with contextlib.ExitStack() as opened:
        for index in range(MAX_STREAMS_PER_CLIENT):
            opened.enter_context(live.listening("mer_a", f"ord_{index}", "192.0.2.1"))
        with pytest.raises(ApiError) as refused:
            opened.enter_context(live.listening("mer_a", "ord_x", "192.0.2.1"))
        assert refused.value.status == 429
        with live.listening("mer_a", "ord_x", "192.0.2.2"):  # another address is not held back
            assert live.streams == MAX_STREAMS_PER_CLIENT + 1
    assert live.streams == 0 and live.streams_by_client == {} and live.watches == {}
    with live.listening("mer_a", "ord_x", "192.0.2.1"):
        assert live.streams_by_client == {"192.0.2.1": 1}
