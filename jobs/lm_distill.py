"""Ray job entry point: language-model distillation (method: kd on text, WR/LTR losses).

    ray job submit --working-dir . -- python jobs/lm_distill.py --config configs/<file>.yaml [--set key=value ...]

Runs `raykd run CONFIG` on the cluster (the uploaded copy of this repository) and exits with its status.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working_dir (this repo) comes first

from jobs._entry import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("run", "language-model distillation (method: kd on text, WR/LTR losses)."))
