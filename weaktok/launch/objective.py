"""What a training run reports to Ray (Train and Tune): the validation record's scalars and the sweep objective."""

from __future__ import annotations

from weaktok.generate.sampler import MODES
from weaktok.lscore.exact import LSCORE_NAMES


def sweep_metrics(record: dict, lscore_weight: float) -> dict:
    """Scalar metrics of a validation record plus the generations' L-Score distance to the target (per term, mean
    over the generation modes; ``lscore_dist``: ``val_gen_std_dist_total``) and the objective
    ``val_recon + lscore_weight * lscore_dist`` (inf when the pool failed and the L-Score counts)."""
    out = {
        k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    per_mode = [
        record[f"val_gen_{m}_std_dist"] for m in MODES if record.get(f"val_gen_{m}_std_dist")
    ]
    if per_mode:
        out.update(
            {
                f"lscore_dist_{n}": float(sum(d) / len(d))
                for n, d in zip(LSCORE_NAMES, zip(*per_mode))
            }
        )
    if "val_gen_std_dist_total" in record:
        out["lscore_dist"] = float(record["val_gen_std_dist_total"])
    out["objective"] = float(record["val_recon"]) + lscore_weight * out.get("lscore_dist", 0.0)
    if lscore_weight and record.get(
        "val_gen_error"
    ):  # the pool failed: unscored, so never the best
        out["objective"] = float("inf")
    return out
