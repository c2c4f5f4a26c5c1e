"""Benchmark output: rows printed and kept as CSV under bench/out/, and the RESULT line."""

import csv
import os
import pathlib

OUT = pathlib.Path(__file__).resolve().parent / "out"


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict] = []

    def row(self, **figures) -> None:
        self.rows.append(figures)
        print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)

    def result(self, **figures) -> None:
        """Write the CSV and print the one line that scripts read."""
        self.rows.append({"result": 1, **figures})
        OUT.mkdir(exist_ok=True)
        keys = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(OUT / f"{self.name}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        print(f"RESULT {self.name} " + " ".join(f"{key}={value}" for key, value in figures.items()), flush=True)
