"""The URL serve gives out (links, QR codes, events) and the one the simulated providers call back at."""

import argparse
import socket

import pytest

from edge.cli import _public_url, local_url_of, public_url_of


def test_a_specific_host_is_given_out_as_it_is():
    assert public_url_of("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert public_url_of("::1", 8080) == "http://[::1]:8080"
    assert local_url_of("192.0.2.7", 8080) == "http://192.0.2.7:8080"


@pytest.mark.parametrize("wildcard, loopback", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("", "127.0.0.1")])
def test_every_interface_is_given_out_as_the_machines_name_and_reached_here_on_loopback(wildcard, loopback):
    assert public_url_of(wildcard, 8080) == f"http://{socket.gethostname()}:8080"
    assert local_url_of(wildcard, 8080) == f"http://{loopback}:8080"


def test_a_configured_public_url_wins():
    assert public_url_of("0.0.0.0", 8080, "https://pay.example.com") == "https://pay.example.com"


@pytest.mark.parametrize("text, taken", [("https://pay.example.com/", "https://pay.example.com"),
                                         ("http://[2001:db8::1]:8443/gate", "http://[2001:db8::1]:8443/gate")])
def test_a_public_url_is_taken_without_its_trailing_slash(text, taken):
    assert _public_url(text) == taken


@pytest.mark.parametrize("text", ["pay.example.com", "ftp://pay.example.com", "https://", "https://u:p@pay.example.com",
                                  "https://pay.example.com/?a=1", "https://pay.example.com/#top"])
def test_anything_but_an_http_url_of_a_host_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _public_url(text)
