"""Locust users for the stack's ceiling (bench/ceiling.py runs them against bench/ceiling_app.py).

Run by locust in its own processes only (locust patches them with gevent).
PAYGATE_CEILING_RATE is each user's pace: requests per second for
SingleRequestUser, payments per second for CardPaymentUser. Bodies are the
size of the real ones; a non-2xx is a failure (FastHttpUser's default).
"""

import os

from locust import FastHttpUser, constant_throughput, task

from bench.names import CAPTURE

RATE = float(os.environ.get("PAYGATE_CEILING_RATE", "1"))
HEADERS = {"Authorization": "Bearer sk_test_0123456789abcdef0123456789abcdef", "Content-Type": "application/json"}
ORDER = b'{"amount":1000,"currency":"usd","name":"ceiling order","expires_in_s":900}'
PAYMENT = b'{"order_id":"ord_0123456789abcdef","payment_method":"card","card":{"number":"4242424242424242"}}'


class SingleRequestUser(FastHttpUser):
    wait_time = constant_throughput(RATE)

    @task
    def create_order(self) -> None:
        self.client.post("/v1/orders", data=ORDER, headers=HEADERS)


class CardPaymentUser(FastHttpUser):
    wait_time = constant_throughput(RATE)

    @task
    def pay(self) -> None:
        self.client.post("/v1/orders", data=ORDER, headers=HEADERS)
        self.client.post("/v1/payments", data=PAYMENT, headers=HEADERS, name="POST /v1/payments [card]")
        self.client.post("/v1/payments/pay_0123456789abcdef/capture", data=b"{}", headers=HEADERS, name=CAPTURE)
