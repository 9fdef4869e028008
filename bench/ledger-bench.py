#!/usr/bin/python3
"""Ledger throughput: reserve + commit pairs per second for N parallel builders (processes), against SQLite (a
file in a temporary directory) and PostgreSQL (a throw-away server started here as `nobody` on a unix socket).
All builders share one fingerprint under a limit they never reach, so every reservation contends for the same
per-key lock: the worst case of a farm stamping one base. Prints JSON with records/s per backend and the ratio.

Usage (root, from a build tree): PYTHONPATH=build/python /usr/bin/python3 bench/ledger-bench.py \
        [--builders 8] [--records 200]
"""
import argparse
import glob
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import luksforge


def pg_program(name):
    found = shutil.which(name) or (sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name)) or [None])[-1]
    if not found:
        sys.exit("PostgreSQL's %s is not installed (tools/deps.sh installs postgresql)" % name)
    return found


class Postgres:
    def __init__(self, top):
        self.data = os.path.join(top, "data")
        self.socket = os.path.join(top, "socket")
        os.chmod(top, 0o755)
        os.mkdir(self.data)
        os.mkdir(self.socket)
        subprocess.run(["chown", "nobody", self.data, self.socket], check=True)
        subprocess.run(["runuser", "-u", "nobody", "--", pg_program("initdb"), "-D", self.data, "-A", "trust",
                        "-U", "luksforge", "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["runuser", "-u", "nobody", "--", pg_program("pg_ctl"), "-D", self.data, "-l",
                        os.path.join(self.socket, "log"), "-w", "-o",
                        "-k %s -c listen_addresses=" % self.socket, "start"], check=True, stdout=subprocess.DEVNULL)
        self.url = "postgresql:///postgres?host=%s&user=luksforge" % self.socket

    def stop(self):
        subprocess.run(["runuser", "-u", "nobody", "--", pg_program("pg_ctl"), "-D", self.data, "-m", "fast", "-w",
                        "stop"], stdout=subprocess.DEVNULL)


def builder(location, index, records, start):
    ledger = luksforge.Ledger(location)
    start.wait()
    for n in range(records):
        record = luksforge.LedgerRecord(fingerprint="b" * 64, image="/bench/%d-%d.img" % (index, n), event="stamped")
        ledger.commit(ledger.reserve(record, max_instances=10 ** 9))
    ledger.close()


def measure(location, builders, records):
    luksforge.Ledger(location).close()  # schema created outside the timing
    start = multiprocessing.Barrier(builders + 1)
    procs = [multiprocessing.Process(target=builder, args=(location, i, records, start)) for i in range(builders)]
    for p in procs:
        p.start()
    start.wait()
    began = time.monotonic()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit("a builder failed against %s" % location)
    seconds = time.monotonic() - began
    return {"records": builders * records, "seconds": round(seconds, 3),
            "records_per_second": round(builders * records / seconds, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--builders", type=int, default=8)
    parser.add_argument("--records", type=int, default=200, help="reserve+commit pairs per builder")
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="luksforge-ledger-bench.")
    server = None
    try:
        sqlite = measure(os.path.join(top, "ledger.db"), args.builders, args.records)
        server = Postgres(top)
        postgres = measure(server.url, args.builders, args.records)
    finally:
        if server:
            server.stop()
        shutil.rmtree(top, ignore_errors=True)
    print(json.dumps({"builders": args.builders, "sqlite": sqlite, "postgresql": postgres,
                      "postgresql_vs_sqlite": round(postgres["records_per_second"] / sqlite["records_per_second"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
