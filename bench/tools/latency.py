#!/usr/bin/env python3
"""Summarise h2load --log-file lines (start_us <TAB> status <TAB> duration_us) per status code.

    latency.py LOGFILE [LOGFILE...]   -> one JSON object: {status: {count, p50_ms, p99_ms, max_ms}}
Status -1 (h2load's code for a request that got no response) is kept as its own key.
"""
import json
import sys


def pct(v, q):
    if not v:
        return None
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def main():
    by = {}
    for path in sys.argv[1:]:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) != 3:
                    continue
                by.setdefault(parts[1], []).append(int(parts[2]))
    out = {}
    for st, v in sorted(by.items()):
        v.sort()
        out[st] = {"count": len(v), "p50_ms": round(pct(v, 50) / 1000, 3), "p99_ms": round(pct(v, 99) / 1000, 3),
                   "max_ms": round(v[-1] / 1000, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
