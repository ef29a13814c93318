"""wandb (offline): a run's rows with its advantage maps, and a comparison's report as a run of its group."""
import glob
import os

from rl_vf.metrics_log import MetricsLog, log_report
from rl_vf.report import pyplot


def small_png(path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def media_files(root) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "wandb", "offline-run-*", "files", "media",
                                                                      "**", "*"), recursive=True) if os.path.isfile(p))


def test_rows_carry_png_and_html_media_to_wandb(tmp_path):
    png = small_png(tmp_path / "advantages.png")
    page = tmp_path / "advantages.html"
    page.write_text("<html><body><span style='color:red'>x</span></body></html>")
    log = MetricsLog(str(tmp_path), {"wandb_group": "g"}, "offline")
    log.write({"update": 1, "train/success_rate": 0.5},
              {"diagnostics/advantages": png, "diagnostics/advantages_html": str(page)})
    log.close()
    files = media_files(tmp_path)
    assert any(f.endswith(".png") for f in files) and any(f.endswith(".html") for f in files), files


def test_a_report_is_logged_as_its_groups_report_run(tmp_path):
    png = small_png(tmp_path / "final.png")
    page = tmp_path / "report.html"
    page.write_text("<html><body>report</body></html>")
    log_report(str(tmp_path), "cmp", "offline", {"report/final": png, "report/report": str(page)})
    files = media_files(tmp_path)
    assert any(f.endswith(".png") for f in files) and any(f.endswith(".html") for f in files), files
    log_report(str(tmp_path / "none"), "cmp", "disabled", {"report/final": png})
    assert not os.path.exists(tmp_path / "none")
