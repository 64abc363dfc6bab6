"""Result files that say where they came from: machine, versions, date and the exact command."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys


def env_info() -> dict:
    import torch
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    return info


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.3g}") -> str:
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str, name: str, rows: list[dict], meta: dict, columns=None, title=None) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jp = os.path.join(out_dir, f"{name}.json")
    mp = os.path.join(out_dir, f"{name}.md")
    with open(jp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(mp, "w") as f:
        f.write(f"# {title or name}\n\n")
        for k, v in meta.items():
            f.write(f"- {k}: `{v}`\n")
        f.write("\n" + markdown_table(rows, columns))
    return jp, mp
