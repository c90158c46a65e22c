"""A served step loads where only its runtime environment is installed, not aitune_triton: the step's
own ``from aitune_triton.triton.steps import ...`` gets the served package's stand-in."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import aitune_triton.served

STEP_SOURCE = '''
from aitune_triton.triton.steps import StepTensor, step

@step(inputs=[StepTensor("x", "TYPE_FP32", [-1])], outputs=[("doubled", "TYPE_FP32", [-1])])
def double(x):
    return {"doubled": x * 2}
'''

# Run in a fresh interpreter where importing aitune_triton fails, as in an image without it.
PROGRAM = textwrap.dedent('''
    import sys, numpy as np

    class NoAITuneTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "aitune_triton" or name.startswith("aitune_triton."):
                raise ModuleNotFoundError("aitune_triton is not installed in this image")
            return None

    sys.meta_path.insert(0, NoAITuneTriton())
    sys.path.insert(0, sys.argv[1])
    from shipped_copy.step_runtime import load_step_function

    function = load_step_function(sys.argv[2], "step_module.py", "user_steps", "double")
    print(function(x=np.array([1.0, 2.0], dtype=np.float32))["doubled"].tolist())
''')


def test_a_step_loads_and_runs_without_aitune_triton_installed(tmp_path):
    shutil.copytree(Path(aitune_triton.served.__file__).parent, tmp_path / "shipped_copy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    version_dir = tmp_path / "1"
    version_dir.mkdir()
    (version_dir / "step_module.py").write_text(STEP_SOURCE)

    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), str(version_dir)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2.0, 4.0]"


def test_with_aitune_triton_installed_the_real_decorator_is_used(tmp_path):
    from aitune_triton.served.step_standin import provide_steps_module

    assert provide_steps_module() is False  # installed here: nothing is replaced
    from aitune_triton.triton.steps import Step

    assert Step.__module__ == "aitune_triton.triton.steps"
