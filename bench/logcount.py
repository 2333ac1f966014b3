#!/usr/bin/env python3
"""Count requests in a CNCF Distribution (docker-registry 2.x) log.

Usage: logcount.py LOGFILE FROM_LINE METHOD PATH [STATUS,...]

Counts the requests with method METHOD for exactly PATH (query string ignored)
whose status is in STATUS (default 200,206), in the lines after FROM_LINE
(0-based line offset, as printed by `wc -l` before the measured window).

Distribution 2.8 with `accesslog: { disabled: false }` prints each request
twice: once as a structured "response completed" entry (JSON with
`formatter: json`, or logfmt text) and once as an Apache combined-format line.
The combined lines are counted when the log has any; otherwise the structured
entries are (so a build that prints only one of the two is still counted
once per request).
"""
import json
import re
import sys

COMBINED = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')
LOGFMT_URI = re.compile(r'http\.request\.uri="?(?P<uri>[^"\s]+)"?')
LOGFMT_METHOD = re.compile(r'http\.request\.method="?(?P<m>[A-Z]+)"?')
LOGFMT_STATUS = re.compile(r'http\.response\.status="?(?P<s>\d{3})"?')


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    path, start, method, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    statuses = {int(s) for s in (sys.argv[5] if len(sys.argv) > 5 else "200,206").split(",")}
    combined = structured = 0
    seen_combined = False
    with open(path, "r", errors="replace") as f:
        for i, line in enumerate(f):
            m = COMBINED.search(line)
            if m:
                seen_combined = True
            if i < start:
                continue
            if m:
                if (m["method"] == method and m["uri"].split("?")[0] == want
                        and int(m["status"]) in statuses):
                    combined += 1
                continue
            line = line.strip()
            if line.startswith("{"):
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                uri, meth, st = (e.get("http.request.uri"), e.get("http.request.method"),
                                 e.get("http.response.status"))
                if not str(e.get("msg", "")).startswith("response completed"):
                    continue
            else:
                if "response completed" not in line:
                    continue
                mu, mm, ms = LOGFMT_URI.search(line), LOGFMT_METHOD.search(line), LOGFMT_STATUS.search(line)
                uri = mu and mu["uri"]
                meth = mm and mm["m"]
                st = ms and ms["s"]
            try:
                st = int(st)
            except (TypeError, ValueError):
                continue
            if meth == method and uri and uri.split("?")[0] == want and st in statuses:
                structured += 1
    print(combined if seen_combined else structured)


if __name__ == "__main__":
    main()
