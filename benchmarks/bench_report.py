"""The report of ``benchmarks/bench.py``: one line per configuration while it runs, Markdown tables at the end."""
from __future__ import annotations

import json


def fmt_s(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    mib = n / 2**20
    return f"{mib:.1f} MiB" if abs(mib) < 10 else f"{mib:.0f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "-"
    return f"{a / b:.3f}"


def format_layer_row(row: dict, attentions: list[str]) -> str:
    parts = [f"layer C={row['C']} h={row['heads']} N={row['N']}:"]
    for name in attentions:
        r = row["results"][name]
        parts.append(f"{name} fwd {fmt_s(r.get('forward_s'))} train {fmt_s(r.get('train_s'))} peak {fmt_bytes(r.get('forward_peak'))}")
    if len(attentions) == 2:
        a, b = (row["results"][n] for n in attentions)
        parts.append(f"{attentions[1]}/{attentions[0]} fwd {ratio(b.get('forward_s'), a.get('forward_s'))} macs {ratio(b['macs'], a['macs'])}")
    return "  ".join(parts)


def format_model_row(row: dict, attentions: list[str]) -> str:
    parts = [f"model {row['model']} {row['input']}:"]
    for name in attentions:
        r = row["results"][name]
        parts.append(
            f"{name} plain {fmt_s(r.get('forward_plain_s'))} fast {fmt_s(r.get('forward_fast_s'))}"
            f" (fast/plain {ratio(r.get('forward_fast_s'), r.get('forward_plain_s'))})"
        )
    return "  ".join(parts)


def format_tiling(result: dict) -> str:
    return (
        f"tiling {result['model']} {result['image']} tile {result['tile']} overlap {result['overlap']} ({result['tiles']} tiles): "
        f"{fmt_s(result['seconds'])}, peak {fmt_bytes(result['image_peak'])} vs bound {fmt_bytes(result['bound'])} "
        f"(one tile {fmt_bytes(result['tile_peak'])} + buffers {fmt_bytes(result['buffers'])})"
    )


def saving_check(csa: dict, glmha_: dict, time_key: str) -> tuple[float, float, bool] | None:
    """(time saving, MAC saving, whether time saving >= 0.8 x MAC saving) for target (a)."""
    if time_key not in csa or time_key not in glmha_:
        return None
    time_saving = 1 - glmha_[time_key] / csa[time_key]
    mac_saving = 1 - glmha_["macs"] / csa["macs"]
    return time_saving, mac_saving, time_saving >= 0.8 * mac_saving


def markdown(report: dict) -> str:
    attentions = report["attentions"]
    lines = [f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", ""]
    if report.get("layers"):
        lines += ["### Attention layer", ""]
        head = "| C | heads | N |"
        for n in attentions:
            head += f" {n} MACs | {n} fwd | {n} train | {n} fwd peak | {n} train peak |"
        if len(attentions) == 2:
            head += f" {attentions[1]}/{attentions[0]} MACs | fwd | train | fwd peak | train peak |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in report["layers"]:
            cells = [str(row["C"]), str(row["heads"]), row["N"]]
            for n in attentions:
                r = row["results"][n]
                cells += [f"{r['macs'] / 1e9:.3f} G", fmt_s(r.get("forward_s")), fmt_s(r.get("train_s")),
                          fmt_bytes(r.get("forward_peak")), fmt_bytes(r.get("train_peak"))]
            if len(attentions) == 2:
                a, b = (row["results"][n] for n in attentions)
                cells += [ratio(b["macs"], a["macs"]), ratio(b.get("forward_s"), a.get("forward_s")),
                          ratio(b.get("train_s"), a.get("train_s")), ratio(b.get("forward_peak"), a.get("forward_peak")),
                          ratio(b.get("train_peak"), a.get("train_peak"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("models"):
        lines += ["### Models", ""]
        head = ("| model | input | attention | params | GMACs | fwd plain | fwd fast | fast/plain | first fast call "
                "| fast max abs diff | train step | fwd peak plain | fwd peak fast | train peak |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in report["models"]:
            for n in attentions:
                r = row["results"][n]
                diff = r.get("fast_max_abs_diff")
                lines.append("| " + " | ".join([
                    row["model"], row["input"], n, f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e9:.2f}",
                    fmt_s(r.get("forward_plain_s")), fmt_s(r.get("forward_fast_s")),
                    ratio(r.get("forward_fast_s"), r.get("forward_plain_s")), fmt_s(r.get("first_fast_call_s")),
                    "-" if diff is None else f"{diff:.1e}", fmt_s(r.get("train_s")),
                    fmt_bytes(r.get("forward_plain_peak")), fmt_bytes(r.get("forward_fast_peak")), fmt_bytes(r.get("train_peak")),
                ]) + " |")
        lines.append("")
        if len(attentions) == 2:
            lines += ["GLMHA against CSA (time saving, MAC saving; target: time saving >= 0.8 x MAC saving):", ""]
            for row in report["models"]:
                a, b = (row["results"][n] for n in attentions)
                for key in ("forward_plain_s", "forward_fast_s", "train_s"):
                    check = saving_check(a, b, key)
                    if check:
                        lines.append(f"- {row['model']} {row['input']} {key}: time saving {check[0]:.1%}, "
                                     f"MAC saving {check[1]:.1%}, ratio {check[0] / check[1]:.2f} -> "
                                     f"{'met' if check[2] else 'NOT met'}")
            lines.append("")
    if report.get("tiling"):
        t = report["tiling"]
        lines += ["### Tiled restoration", "",
                  f"{t['model']} ({t['params'] / 1e6:.2f} M params, kwargs {json.dumps(t['model_kwargs'])}), image {t['image']}, "
                  f"tile {t['tile']}, overlap {t['overlap']}, {t['tiles']} tiles: {fmt_s(t['seconds'])}; "
                  f"peak {fmt_bytes(t['image_peak'])}, bound (one tile's peak {fmt_bytes(t['tile_peak'])} + "
                  f"image-sized buffers {fmt_bytes(t['buffers'])}) {fmt_bytes(t['bound'])}: "
                  f"{'within' if t['bound'] is not None and t['image_peak'] <= t['bound'] else 'NOT within'} the bound.", ""]
    return "\n".join(lines)
