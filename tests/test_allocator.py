"""The command keeps freed memory for the next batch (io/allocator.py): far fewer page faults per
batch, and the user's own allocator settings win. Each case runs in a fresh process, as the
allocator is the whole process's."""
import os
import platform
import subprocess
import sys

import pytest

FAULTS_PER_CALL = """
import resource, torch, timm
from vit_explain.io.allocator import keep_freed_memory
print(keep_freed_memory())
torch.set_num_threads(1)
from vit_explain import VITAttentionRollout
rollout = VITAttentionRollout(timm.create_model("vit_tiny_patch16_224", pretrained=False), discard_ratio=0.9)
x = torch.randn(2, 3, 224, 224)
rollout(x), rollout(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    rollout(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator setting is glibc's")


def run(code: str, **env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    clean.pop("VIT_EXPLAIN_MALLOC", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**clean, **env})
    return result.stdout.split()


@glibc_only
def test_kept_memory_saves_the_page_faults_of_every_batch():
    kept, kept_faults = run(FAULTS_PER_CALL)
    system, system_faults = run(FAULTS_PER_CALL, VIT_EXPLAIN_MALLOC="system")
    assert (kept, system) == ("True", "False")
    # measured: ~25 against ~2,200 faults per rollout of 2 images
    assert float(kept_faults) * 10 < float(system_faults), (kept_faults, system_faults)


@pytest.mark.parametrize("env", [{"VIT_EXPLAIN_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_users_setting_wins(env):
    code = "from vit_explain import keep_freed_memory; print(keep_freed_memory())"  # the documented name
    assert run(code, **env) == ["False"]


def test_the_command_keeps_freed_memory():
    code = ("from vit_explain.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "from vit_explain.io import allocator; print(allocator._applied)")
    expected = str(platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert run(code)[-1] == expected
