"""Report helpers shared by the study side (``rl_vf.compare``, ``rl_vf.diagnostics``): number
formatting, a report as a list of blocks rendered to Markdown and to one self-contained HTML page,
JSON-safe results, and the matplotlib plots of intervals, learning curves and performance profiles.

A block is a tuple: ``("h1"|"h2"|"p", text)``, ``("list", items)``, ``("table", header, rows)`` or
``("img", path relative to the report folder, alt text)``.

This module reads and writes files only; it imports no other rl_vf module (nor torch), so any part
of the package can use it without an import circle.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os

import numpy as np


# ---- rendering ----------------------------------------------------------------------------------
def num(x, inf: str = "never") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return inf if x > 0 else "-inf"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def ci(t, digits: int = 3) -> str:
    return "–" if t is None else f"{t[0]:.{digits}f} [{t[1]:.{digits}f}, {t[2]:.{digits}f}]"


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table":
            header, rows = rest
            out.append("\n".join("| " + " | ".join(map(str, r)) + " |"
                                 for r in [header, ["---"] * len(header), *rows]))
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], root: str, title: str) -> str:
    """One self-contained page: the images are embedded as base64."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}</style></head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in rest[0]) + "</ul>")
        elif kind == "table":
            header, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
        elif kind == "img":
            with open(os.path.join(root, rest[0]), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            out.append(f"<p><img alt='{e(rest[1])}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(out + ["</body></html>"]) + "\n"


def jsonable(x):
    """numpy values and tuples as JSON types; inf and NaN as null."""
    if isinstance(x, dict):
        return {(k if isinstance(k, str) else str(k)): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_outputs(out: str, stem: str, json_name: str, blocks: list[tuple], results: dict, title: str) -> None:
    """OUT/<stem>.md, OUT/<stem>.html and OUT/<json_name> (every number in ``results``)."""
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(render_markdown(blocks))
    with open(os.path.join(out, f"{stem}.html"), "w") as f:
        f.write(render_html(blocks, out, title))
    with open(os.path.join(out, json_name), "w") as f:
        json.dump(jsonable(results), f, indent=1)


# ---- plots --------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_intervals(table: dict[str, dict], path: str, xlabel: str) -> None:
    """IQM, mean and median with their CIs, one row per variant."""
    plt = pyplot()
    names = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.6 * len(names) + 1.4), sharey=True)
    for ax, stat in zip(axes, ("iqm", "mean", "median")):
        for i, v in enumerate(names):
            p, lo, hi = table[v][stat]
            ax.errorbar([p], [i], xerr=[[p - lo], [hi - p]], fmt="o", capsize=4, color=f"C{i}")
        ax.set_title(stat.upper() if stat == "iqm" else stat)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, dict], path: str, ylabel: str, variants: list[str],
                x_axes: dict[str, str]) -> None:
    """One panel per x axis of ``x_axes`` ({metric key: axis label}, four of them): IQM over seeds and its
    95% band, one colour per variant."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (axis, label) in zip(axes.flat, x_axes.items()):
        for i, v in enumerate(variants):
            b = curves.get(axis, {}).get(v)
            if b is not None:
                ax.plot(b["x"], b["iqm"], color=f"C{i}", label=v)
                ax.fill_between(b["x"], b["lo"], b["hi"], color=f"C{i}", alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(profiles: dict[str, tuple], taus: np.ndarray, path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (v, (p, lo, hi)) in enumerate(profiles.items()):
        ax.plot(taus, p, color=f"C{i}", label=v)
        ax.fill_between(taus, lo, hi, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of (seed, task) runs with score > τ")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
