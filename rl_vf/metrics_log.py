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

    def write(self, row: dict, media: dict[str, str] | None = None) -> None:
        """One update's row; ``media`` ({wandb key: PNG or HTML file}) goes to wandb only."""
        self.file.write(json.dumps({k: clean(v) for k, v in row.items()}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({**row, **wandb_media(media or {})}, step=row["update"])

    def summary(self, summary: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_media(files: dict[str, str]) -> dict:
    """{key: file} as wandb objects: PNGs as images, HTML pages (self-contained) as HTML panels."""
    import wandb

    out = {}
    for key, path in files.items():
        if path.endswith(".png"):
            out[key] = wandb.Image(path)
        else:
            with open(path) as f:
                out[key] = wandb.Html(f.read())
    return out


def log_report(out_dir: str, group: str, mode: str, files: dict[str, str]) -> None:
    """A comparison's report (plots and page) as one wandb run of ``group`` with job_type "report",
    next to the training runs it summarises (offline runs: ``wandb sync OUT/wandb``)."""
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(project="rl_vf", dir=out_dir, mode=mode, group=group, job_type="report", name=f"{group}-report",
                     settings=wandb.Settings(silent=True))
    run.log(wandb_media(files))
    run.finish()


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
