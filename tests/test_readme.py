"""README's set-up commands stay the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = '. .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q -n 2'
RUN_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && jaxalign run --config configs/default.py --workdir runs/default"


def test_readme_shows_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert RUN_COMMAND in readme
    assert TEST_COMMAND in readme
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1] == TEST_COMMAND


def test_readme_names_every_registered_component():
    from jaxalign.methods import METHODS
    from jaxalign.methods.dsearch import DROP_SCHEDULES, SEARCH_SCHEDULES
    from jaxalign.resampling import RESAMPLERS
    from jaxalign.rewards import REWARDS
    from jaxalign.schedulers import SCHEDULERS
    from jaxalign.spaces import SPACES

    readme = (ROOT / "README.md").read_text()
    for name in (*REWARDS, *SPACES, *SCHEDULERS, *METHODS, *RESAMPLERS, *SEARCH_SCHEDULES, *DROP_SCHEDULES, "CoSyNE"):
        assert f"`{name}`" in readme, name
