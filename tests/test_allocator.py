"""glibc's malloc thresholds (`vitkit.engine.allocator`): freed tensors are reused without page faults, and the
user's own choice wins. Each case is a fresh process, since the settings hold for a whole process."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

# 64 MiB tensors made and freed (above glibc's largest adaptive mmap threshold, 32 MiB): two to let the heap grow,
# then three rounds of four, and the fewest page faults of a round (a small allocation landing beside the freed
# block can make the heap grow once more), then what tune() said; a second tune() must not change it
PROBE = """
import json, resource, torch
from vitkit.engine import allocator
state = allocator.tune()
for _ in range(2):
    torch.ones(2 ** 24)
rounds = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(2 ** 24)
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "again": allocator.tune(), "faults": min(rounds)}))
"""


def probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "VITKIT_MALLOC"))}
    r = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_tuned_malloc_reuses_freed_memory_where_glibcs_default_faults_it_in_again():
    tuned, default = probe(), probe(VITKIT_MALLOC="default")
    assert tuned["state"] == tuned["again"] == "tuned"
    assert default["state"] == "left as glibc's default (VITKIT_MALLOC)"
    pages = 4 * 2 ** 26 // 4096  # four 64 MiB tensors in 4 KiB pages
    assert default["faults"] > pages / 2  # glibc maps each one afresh
    assert tuned["faults"] < pages / 20  # the freed block is reused


def test_thresholds_the_user_set_are_left_alone():
    assert probe(MALLOC_TRIM_THRESHOLD_="1000000")["state"] == "left as the environment set it (MALLOC_TRIM_THRESHOLD_)"
    chosen = probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1000000")
    assert chosen["state"] == "left as the environment set it (GLIBC_TUNABLES)"
    assert probe(MALLOC_ARENA_MAX="2")["state"] == "tuned"  # not a threshold
