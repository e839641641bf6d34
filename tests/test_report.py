"""optsample-table: hand-made rows with known numbers -> exact markdown / LaTeX / CSV cells, best marked."""

import math

import pandas as pd
import pytest

from optsample.runner import report, results

# (sampler, nfe) -> metric values over seeds; dyadic numbers so means are exact in binary.
RMSE = {("euler", 10): [0.5, 0.75], ("heun", 10): [0.25, 0.5], ("euler", 20): [0.25, 0.375], ("heun", 20): [0.125]}


@pytest.fixture
def results_dir(tmp_path):
    directory = tmp_path / "results"
    for (sampler, nfe), values in RMSE.items():
        for seed, value in enumerate(values):
            results.append_row(directory, {
                "config_hash": f"{sampler}-{nfe}-{seed}", "sampler.name": sampler, "nfe": nfe, "seed": seed,
                "metric.rmse": value, "metric.loglik": -value, "schedule.name": "karras",
            })
    return directory


def test_markdown_pivot_exact(results_dir, tmp_path):
    assert report.main([str(results_dir), "--metric", "rmse", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "rmse_by_nfe.md").read_text()
    # std = sample std (ddof 1): |0.75 - 0.5| / sqrt(2) = 0.1768; |0.375 - 0.25| / sqrt(2) = 0.0884
    assert md.splitlines()[2:] == [
        "| sampler.name | nfe=10 | nfe=20 |",
        "|---|---:|---:|",
        "| euler | 0.625 ± 0.177 | 0.312 ± 0.0884 |",
        "| heun | **0.375 ± 0.177** | **0.125** |",
    ]
    assert md.startswith("rmse (lower is better")
    png = tmp_path / "out" / "rmse_by_nfe.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_and_latex_cells(results_dir, tmp_path):
    report.main([str(results_dir), "--metric", "rmse", "--out", str(tmp_path), "--name", "t"])
    csv = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert list(csv.columns) == ["nfe=10", "nfe=10 std", "nfe=20", "nfe=20 std"]
    assert csv.loc["euler", "nfe=10"] == 0.625 and csv.loc["heun", "nfe=10"] == 0.375
    assert csv.loc["euler", "nfe=20"] == 0.3125 and csv.loc["heun", "nfe=20"] == 0.125
    assert csv.loc["euler", "nfe=10 std"] == pytest.approx(0.25 / math.sqrt(2), abs=1e-15)
    assert csv.loc["euler", "nfe=20 std"] == pytest.approx(0.125 / math.sqrt(2), abs=1e-15)
    assert math.isnan(csv.loc["heun", "nfe=20 std"])  # one seed: no spread
    tex = (tmp_path / "t.tex").read_text().splitlines()
    assert r"sampler.name & nfe=10 & nfe=20 \\" in tex
    assert r"heun & \textbf{0.375 $\pm$ 0.177} & \textbf{0.125} \\" in tex
    assert r"euler & 0.625 $\pm$ 0.177 & 0.312 $\pm$ 0.0884 \\" in tex


def test_direction_from_registry_and_override(results_dir):
    frame = report.load_rows(results_dir)
    loglik = report.pivot(frame, "loglik", "sampler.name", "nfe")  # registered higher-is-better
    assert loglik.higher_is_better
    assert loglik.best.to_dict() == {10: {"euler": False, "heun": True}, 20: {"euler": False, "heun": True}}
    flipped = report.pivot(frame, "rmse", "sampler.name", "nfe", higher_is_better=True)
    assert flipped.best.to_dict() == {10: {"euler": True, "heun": False}, 20: {"euler": True, "heun": False}}


def test_filters_ties_and_errors(results_dir):
    frame = report.load_rows(results_dir)
    only_10 = report.pivot(report.apply_filters(frame, ["nfe=10"]), "rmse", "sampler.name", "seed")
    # seed 0: euler 0.5, heun 0.25; seed 1: euler 0.75, heun 0.5 -> single values, no +-
    assert report.to_markdown(only_10).splitlines()[-2:] == ["| euler | 0.5 | 0.75 |", "| heun | **0.25** | **0.5** |"]
    tie = pd.DataFrame({"sampler.name": ["a", "b"], "nfe": [4, 4], "metric.mmd2_unbiased": [0.5, 0.5]})
    assert report.pivot(tie, "mmd2_unbiased", "sampler.name", "nfe").best[4].tolist() == [True, True]
    with pytest.raises(ValueError, match="metric.loglik, metric.rmse"):
        report.pivot(frame, "fid", "sampler.name", "nfe")
    mixed = frame.assign(**{"schedule.name": ["karras", "exp"] * (len(frame) // 2) + ["karras"] * (len(frame) % 2)})
    with pytest.warns(UserWarning, match="schedule.name"):
        report.pivot(mixed, "rmse", "sampler.name", "nfe")
    assert report.main([str(results_dir / "missing"), "--metric", "rmse"]) == 2
    (results_dir.parent / "empty").mkdir()
    assert report.main([str(results_dir.parent / "empty"), "--metric", "rmse"]) == 1
