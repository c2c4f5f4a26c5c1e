"""The ISO 4217 currencies the gateway accepts: each one's minor-unit exponent and numeric code."""

# code -> minor-unit exponent (VND, JPY and KRW have none)
CURRENCY_EXPONENTS = {
    "usd": 2, "eur": 2, "gbp": 2, "vnd": 0, "jpy": 0, "krw": 0, "sgd": 2, "thb": 2, "idr": 2, "myr": 2,
    "php": 2, "aud": 2, "cad": 2, "chf": 2, "cny": 2, "hkd": 2, "inr": 2, "nzd": 2, "sek": 2, "nok": 2,
    "dkk": 2, "pln": 2, "czk": 2, "huf": 2, "brl": 2, "mxn": 2, "zar": 2, "aed": 2, "twd": 2, "try": 2,
}
# ISO 4217 numeric codes, for QR payloads (tag 53).
CURRENCY_NUMBERS = {
    "usd": "840", "eur": "978", "gbp": "826", "vnd": "704", "jpy": "392", "krw": "410", "sgd": "702", "thb": "764",
    "idr": "360", "myr": "458", "php": "608", "aud": "036", "cad": "124", "chf": "756", "cny": "156", "hkd": "344",
    "inr": "356", "nzd": "554", "sek": "752", "nok": "578", "dkk": "208", "pln": "985", "czk": "203", "huf": "348",
    "brl": "986", "mxn": "484", "zar": "710", "aed": "784", "twd": "901", "try": "949",
}
if CURRENCY_NUMBERS.keys() != CURRENCY_EXPONENTS.keys():
    raise ImportError("every accepted currency needs both an exponent and a numeric code")
