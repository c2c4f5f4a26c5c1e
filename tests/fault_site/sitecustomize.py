"""Python imports this at start-up when its folder is on PYTHONPATH (engine_faults.faults_environment()): so shard
processes and `paygate` commands started by a test meet the same engine faults, with no door for them in paygate."""

import pathlib
import sys

sys.path.append(str(pathlib.Path(__file__).resolve().parent.parent))

import engine_faults  # noqa: E402  (after its folder is on the path)

engine_faults.install()
