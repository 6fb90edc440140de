"""Ray job entry point: run (or resume) one experiment of any method.

    ray job submit --working-dir . -- python jobs/run.py --config configs/<file>.yaml [--set key=value ...]

Runs `raykd run CONFIG` on the cluster (the uploaded copy of this repository) and exits with its
status; the method is the config's `method:`. Submitting the same command again resumes the run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working_dir (this repo) comes first

from jobs._entry import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("run", "run (or resume) one raykd experiment of any method."))
