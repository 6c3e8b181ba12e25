"""vaelab compare on 8×8 digits: every output written, the numbers consistent."""

import json

from vaelab.cli import main
from vaelab.compare import code_lines, halves
from vaelab.models import VAE


def test_compare_writes_both_pages_with_every_objective(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--elbo",
        "trace,meanfield",
        "--iw-samples",
        "20",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "pyro:meanfield" in printed and "compare.html" in printed
    summary = json.loads((out / "compare.json").read_text())
    specs = [row["spec"] for row in summary["runs"]]
    assert specs == ["torch", "pyro:trace", "pyro:meanfield"]
    by_spec = {row["spec"]: row for row in summary["runs"]}
    # Same seed, same objective: TraceMeanField_ELBO retraces the hand-written run.
    assert abs(by_spec["torch"]["test_elbo"] - by_spec["pyro:meanfield"]["test_elbo"]) < 1e-3
    assert by_spec["torch"]["time_ratio_to_torch"] == 1.0
    html = (out / "compare.html").read_text()
    markdown = (out / "compare.md").read_text()
    assert html.count("data:image/png;base64,") == 1 and "silently wrong" in html
    assert "| pyro:trace |" in markdown and "Lines of code" in markdown
    assert (out / "torch" / "eval.json").exists()


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    def sample():
        """A docstring
        over two lines."""
        # a comment
        x = 1

        return x

    assert code_lines(sample) == 2
    loc = halves(VAE)
    assert loc["pyro"] > 0 and loc["torch"] > 0


def test_compare_refuses_to_reuse_runs_of_another_seed_or_more_epochs(tmp_path, capsys):
    out = tmp_path / "cmp"
    common = ["compare", "--dataset", "digits", "--elbo", "meanfield", "--iw-samples", "5", "--device", "cpu"]
    common += ["--no-progress", "--out", str(out)]
    assert main([*common, "--epochs", "2"]) == 0
    capsys.readouterr()
    before = (out / "torch" / "checkpoint.pt").read_bytes()
    assert main([*common, "--epochs", "2", "--seed", "5"]) == 1
    assert "holds a run with other settings: seed (0 -> 5); choose another --out" in capsys.readouterr().err
    assert main([*common, "--epochs", "1"]) == 1
    assert "epochs (2 -> 1)" in capsys.readouterr().err
    assert (out / "torch" / "checkpoint.pt").read_bytes() == before
    assert main([*common, "--epochs", "3"]) == 0  # more epochs of the same runs: continued
    assert json.loads((out / "compare.json").read_text())["runs"][0]["metrics"][-1]["epoch"] == 3
