#!/usr/bin/env python3
"""Runs a command and prints a markdown table row: its wall time and the peak RSS of its process.

    python3 scripts/measure.py WORK NAME CMD...

The command's stdout goes to WORK/out.txt and its stderr to WORK/err.txt. On failure, stderr is shown and the
exit status is 1, naming the step. Used by scripts/scale-check.sh and scripts/tinyllama-check.sh.
"""

import resource
import subprocess
import sys
import time

work, name, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.monotonic()
with open(f"{work}/out.txt", "wb") as out, open(f"{work}/err.txt", "wb") as err:
    rc = subprocess.run(cmd, stdout=out, stderr=err).returncode
secs = time.monotonic() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
if rc != 0:
    sys.stderr.write(open(f"{work}/err.txt").read())
    sys.exit(f"`{name}` failed (exit {rc})")
print(f"| {name} | {secs:.1f} | {rss / 2**30:.2f} GiB |", flush=True)
