"""Metrics to ``metrics.jsonl`` (one row per update) and to wandb (offline by default)."""
from __future__ import annotations

import json
import math
import os
import uuid


class MetricsLog:
    def __init__(self, run_dir: str, config: dict, wandb_mode: str = "offline", resume_after: int | None = None):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if resume_after is not None:
            keep_rows_up_to(self.path, resume_after)  # rows past the checkpoint are replayed exactly
        self.file = open(self.path, "a")
        self.wandb = None
        if wandb_mode != "disabled":
            import wandb

            id_file = os.path.join(run_dir, "wandb_id")
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:8]
            with open(id_file, "w") as f:
                f.write(run_id)
            self.wandb = wandb.init(
                project="rl_vf", dir=run_dir, mode=wandb_mode, config=config, id=run_id, resume="allow",
                group=config.get("wandb_group") or None, job_type=config.get("wandb_job_type") or None,
                name=os.path.basename(os.path.normpath(run_dir)), settings=wandb.Settings(silent=True),
            )

    def write(self, row: dict) -> None:
        self.file.write(json.dumps({k: clean(v) for k, v in row.items()}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=row["update"])

    def summary(self, summary: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def clean(value):
    """JSON has no NaN/inf: write them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def keep_rows_up_to(path: str, update: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["update"] <= update]
    with open(path, "w") as f:
        f.writelines(rows)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
