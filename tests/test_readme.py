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
    from jaxalign.trackers import TRACKERS

    readme = (ROOT / "README.md").read_text()
    for name in (*REWARDS, *SPACES, *SCHEDULERS, *METHODS, *TRACKERS, *RESAMPLERS, *SEARCH_SCHEDULES, *DROP_SCHEDULES, "CoSyNE"):
        assert f"`{name}`" in readme, name


def test_readme_python_example_runs_on_the_public_api(monkeypatch, capsys):
    """README's Python block, as written, on the test-size default config: it uses only ``import jaxalign``, and the
    search it drives improves on the baseline (best so far counts generation 0, which holds the baseline)."""
    import re

    import numpy as np

    import jaxalign
    from conftest import small_config

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert "from jaxalign." not in block and "import jaxalign\n" in block
    monkeypatch.setattr(jaxalign, "default_config", small_config)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    best, baseline = (float(value) for value in capsys.readouterr().out.split())
    assert best >= baseline and np.float32(best) == np.float32(scope["report"].best_fitness)
    for name in jaxalign.__all__:  # every public name resolves
        assert getattr(jaxalign, name) is not None, name
