"""edge.cache.LruCache, and the caches of the edge's unauthenticated paths built on it: QR images and merchants."""

import warnings

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from edge import qr_api
from edge.cache import MISSING, LruCache
from edge.http import MERCHANT_CACHE_SIZE, MERCHANT_MISS_CACHE_SIZE, merchant_caches
from engine.records import Merchant


def test_the_least_recently_used_entry_leaves_first():
    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now b is the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, MISSING, 3, 2)
    cache.pop("a")
    cache.pop("nothing")
    assert cache.get("a") is MISSING and len(cache) == 1


def test_an_entry_past_its_time_to_live_is_gone():
    cache = LruCache(10, ttl_s=2.0)
    cache.put("a", None, now_s=100.0)
    assert cache.get("a", now_s=101.9) is None  # a cached None is a hit, not MISSING
    assert cache.get("a", now_s=102.0) is MISSING
    assert len(cache) == 0


def test_a_cache_needs_room():
    with pytest.raises(ValueError):
        LruCache(0)


def test_merchant_misses_have_a_small_cache_of_their_own():
    found, misses = merchant_caches()
    for index in range(MERCHANT_MISS_CACHE_SIZE * 3):
        misses.put(f"mer_{index:024x}", None)
    assert len(misses) == MERCHANT_MISS_CACHE_SIZE < MERCHANT_CACHE_SIZE and len(found) == 0


def test_a_qr_image_is_drawn_once_and_the_images_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(qr_api, "PNG_CACHE_SIZE", 3)
    app = web.Application()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)  # string keys, as edge/app.py uses them
        app["png_cache"] = qr_api.png_cache()
    request = make_mocked_request("GET", "/v1/qr/merchants/x.png", app=app)
    payload = qr_api.payload_for(Merchant(id="mer_0123456789abcdef01234567", name="Shop", email=""), None)
    first = qr_api._png(request, payload)
    assert first.content_type == "image/png" and first.body.startswith(b"\x89PNG")
    assert qr_api._png(request, payload).body is first.body  # from the cache, not drawn again
    for index in range(10):
        qr_api._png(request, f"{payload}{index}")
    assert len(app["png_cache"]) == 3
