"""Markdown tables of the ruler check (``weaktok.evaluation.rulers``): what each exact L-Score term read on the
reference signals, the order-invariance probe, and the onset detector's limits on noise and real sounds.

    print(ruler_markdown(ruler_check()))
"""

from __future__ import annotations

from weaktok.lscore.exact import LSCORE_NAMES


def _fmt(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ruler_markdown(rows: list[dict]) -> str:
    """Rows of :func:`ruler_check` -> a markdown table (density/irregularity columns for every preset found)."""
    extra = sorted({k[len("density_") :] for r in rows for k in r if k.startswith("density_")})
    head = [
        "signal",
        "timbral",
        "structural",
        "expected density",
        "density",
        "abs err",
        "expected irreg.",
        "irregularity",
    ]
    for p in extra:
        head += [f"density ({p})", f"abs err ({p})", f"irregularity ({p})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["name"],
            _fmt(r["timbral"]),
            _fmt(r["structural"]),
            _fmt(r["expected_density"]),
            _fmt(r["density"]),
            _fmt(r["abs_err"]),
            _fmt(r["expected_irregularity"], 4),
            _fmt(r["irregularity"], 4),
        ]
        for p in extra:
            cells += [
                _fmt(r[f"density_{p}"]),
                _fmt(r[f"abs_err_{p}"]),
                _fmt(r[f"irregularity_{p}"], 4),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def order_invariance_markdown(result: dict) -> str:
    """:func:`order_invariance` -> a markdown table (term, loop, shuffled, change, relative change)."""
    if "loop" not in result:
        return result["what"]
    lines = ["| term | loop | shuffled | change | rel. change |", "|---|---|---|---|---|"]
    for t in LSCORE_NAMES:
        lines.append(
            f"| {t} | {result['loop'][t]:.4f} | {result['shuffled'][t]:.4f} | "
            f"{result['change'][t]:+.4f} | {100 * result['rel_change'][t]:+.1f} % |"
        )
    return "\n".join(lines)


def limits_markdown(rows: list[dict]) -> str:
    """:func:`detector_limits` rows -> a markdown table of densities (onsets/s), one column per preset."""
    presets = [k for k in rows[0] if k not in ("name", "what")]
    lines = [
        "| sound | " + " | ".join(f"density ({p})" for p in presets) + " |",
        "|---|" + "---|" * len(presets),
    ]
    for r in rows:
        cells = [
            f"{r[p][0]:.2f} (min {r[p][1]:.2f}, max {r[p][2]:.2f})"
            if isinstance(r[p], tuple)
            else f"{r[p]:.3f}"
            for p in presets
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
