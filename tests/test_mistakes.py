"""The mistakes study: each finding is a test.

If a Pyro or torch upgrade changes how a mistake is met, the test that states
the old finding fails and the comparison page's text must be revisited.
"""

import pytest

from vaelab.mistakes import MISTAKES, PATHS, run_study


@pytest.fixture(scope="module")
def findings():
    return {f["name"]: f for f in run_study()}


@pytest.mark.parametrize("mistake", [m.name for m in MISTAKES])
@pytest.mark.parametrize("path", ["vaelab-torch", "vaelab-pyro"])
def test_vaelab_fails_loudly_on_every_mistake(findings, mistake, path):
    assert findings[mistake][path]["outcome"] == "error", findings[mistake][path]


# What the seed's naive loss and the Pyro tutorial's program do, as measured.
EXPECTED = {
    "images-not-flat": {"naive": "right", "pyro": "right"},  # .view / .reshape absorbs it
    "pixels-0-255": {"naive": "error", "pyro": "warning"},  # Pyro: NaN loss with a warning
    "labels-as-pixels": {"naive": "error", "pyro": "error"},
    "latent-size": {"naive": "right", "pyro": "error"},  # the naive KL has no prior to get wrong
    "kl-wrong-axis": {"naive": "wrong", "pyro": "error"},  # silently wrong by 20×
}


@pytest.mark.parametrize("mistake", sorted(EXPECTED))
def test_the_naive_and_pyro_paths_behave_as_reported(findings, mistake):
    for path, outcome in EXPECTED[mistake].items():
        assert findings[mistake][path]["outcome"] == outcome, (path, findings[mistake][path])


def test_the_study_covers_every_path_with_a_detail(findings):
    assert set(EXPECTED) == set(findings)
    for finding in findings.values():
        for path in PATHS:
            assert finding[path]["detail"], (finding["name"], path)
