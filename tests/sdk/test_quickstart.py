"""``capstan quickstart`` end to end, in a subprocess with a fresh CAPSTAN_HOME (embedded SQLite, no server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sklearn.base import BaseEstimator

from capstan.sdk.client import Client
from capstan.settings import Settings
from helpers.server import capstan_command, clean_env

# `pip install . && capstan quickstart` must work with nothing else installed: pandas (a test extra) is made
# unimportable, and the run checks at exit that nothing imported it.
WITHOUT_PANDAS = """
import sys

class NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoPandas())
from capstan.cli.main import main
try:
    main(sys.argv[1:])
finally:
    if "pandas" in sys.modules:
        print("pandas was imported", file=sys.stderr)
"""


def test_quickstart_on_a_fresh_home(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    result = subprocess.run([sys.executable, "-c", WITHOUT_PANDAS, "quickstart"], env=clean_env(home),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr and "pandas was imported" not in result.stderr, result.stderr
    for expected in ("Prepared the data with pipeline wine_prep", "9 steps, 0 from cache",
                     "after cleaning", "Searched 8 trials of study quickstart-", "2 at a time under the local queue",
                     "models:/quickstart@champion", f"CAPSTAN_HOME={home}", "capstan studies show quickstart-",
                     "capstan runs list --experiment quickstart", "capstan models show quickstart",
                     "Deployed version 1 as deployment quickstart", "then version 2 as a 20% canary"):
        assert expected in out, expected
    # The serving demo's table: every request answered, the canary got a share of the second burst.
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│ first") or
            line.startswith("│ canary")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert {(c[0], c[1], c[2]) for c in cells} == {("first", "1", "primary"), ("canary", "1", "primary"),
                                                   ("canary", "2", "canary")}, out
    assert all(c[4] == "0" for c in cells), out  # no errors
    assert sum(int(c[3]) for c in cells if c[0] == "canary") == 500
    assert 0 < int(next(c[3] for c in cells if c[2] == "canary")) < 250

    with Client(settings=Settings.for_home(home)) as client:
        trials = client.search_runs(experiment_names=["quickstart"], filter_string="tags.`capstan.trial.number` != ''")
        assert len(trials) == 8 and all(r.info.status == "FINISHED" for r in trials)  # the study's 8 child runs
        runs = client.search_runs(experiment_names=["quickstart"],
                                  filter_string="tags.`capstan.trial.state` = 'COMPLETE'",
                                  order_by=["metrics.log_loss ASC"])  # the study minimises the held-out log loss
        assert len(runs) >= 2
        best = runs[0]
        assert {"alpha", "epochs"} <= set(best.data.params)
        assert len(client.get_metric_history(best.info.run_id, "train_loss")) == 15  # one point per epoch
        assert {a.path for a in client.list_artifacts(best.info.run_id)} >= {"confusion_matrix.json",
                                                                            "feature_weights.csv"}
        champion = client.get_model_version_by_alias("quickstart", "champion")
        assert champion.run_id == best.info.run_id  # lineage: the best trial's run -> the champion version
        challenger = client.get_model_version_by_alias("quickstart", "challenger")
        assert challenger.run_id == runs[1].info.run_id  # the runner-up
        model = client.load_model("models:/quickstart@champion")
        assert isinstance(model, BaseEstimator)

    again = subprocess.run([*capstan_command(), "quickstart", "--no-serve"], env=clean_env(home),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "from cache" in again.stdout and "0 from cache" not in again.stdout  # the data-prep steps were reused
    with Client(settings=Settings.for_home(home)) as client:
        assert client.get_model_version_by_alias("quickstart", "champion").version == 3  # 1 and 2 were the first run's
        assert client.get_model_version_by_alias("quickstart", "challenger").version == 4


def test_wine_data_is_plain_numpy() -> None:
    import numpy as np

    from capstan.quickstart import wine_data

    data = wine_data()
    assert all(type(part) is np.ndarray for part in (data.x_train, data.x_test, data.y_train, data.y_test))
    assert data.x_train.shape[1] == len(data.feature_names) == 13
    assert len(data.x_train) + len(data.x_test) == 178
