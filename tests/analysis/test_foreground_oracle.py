#!/usr/bin/python3
"""scripts/foreground_oracle.py: its best-order bound (a max-flow min-cut formula) equals
a brute-force search over every assignment of tiny random routings."""
import os
import subprocess
import sys

root = os.environ.get("VMOE_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
out = subprocess.run([sys.executable, os.path.join(root, "scripts", "foreground_oracle.py"), "--selftest"],
                     capture_output=True, text=True)
if out.returncode != 0 or "selftest ok" not in out.stdout:
    sys.exit(f"FAIL: foreground_oracle.py --selftest: {out.stdout}{out.stderr}")
print("foreground_oracle bound: ok")
