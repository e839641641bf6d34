"""The runner reads the configs of the checkout it is imported from, not those an editable install maps."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_config_path_is_this_checkouts_conf(tmp_path):
    # the shared venv's editable install maps optsample.conf to another checkout's conf/ (/work/main/conf
    # here); a worktree imported through PYTHONPATH must still run its own configs
    probe = "import optsample.run as r; print(r.config_path())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert Path(out) == (ROOT / "conf").resolve()
