"""Track a small scikit-learn sweep with the Capstan SDK, register the best model and load it back.

    python examples/quickstart/train.py                 # local stores under CAPSTAN_HOME (~/.capstan)
    CAPSTAN_URL=http://127.0.0.1:8080 python examples/quickstart/train.py   # against `capstan server`

Then: ``capstan runs list --experiment example-digits`` and ``capstan models show example-digits``.
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

import capstan

EXPERIMENT = "example-digits"
MODEL = "example-digits"


def main() -> None:
    x, y = load_digits(return_X_y=True)  # numpy arrays: no pandas needed
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    best: tuple[float, str] | None = None
    for depth in (4, 8, 16):
        with capstan.start_run(experiment=EXPERIMENT, run_name=f"forest-depth{depth}",
                               params={"max_depth": depth, "n_estimators": 50}) as run:
            model = RandomForestClassifier(n_estimators=50, max_depth=depth, random_state=0)
            model.fit(x_train, y_train)
            # Metrics are buffered and written by a background thread; this loop never waits for the store.
            for step, tree_count in enumerate(range(10, 51, 10)):
                partial = RandomForestClassifier(n_estimators=tree_count, max_depth=depth, random_state=0)
                partial.fit(x_train, y_train)
                capstan.log_metric("accuracy_by_trees", accuracy_score(y_test, partial.predict(x_test)), step=step)
            accuracy = accuracy_score(y_test, model.predict(x_test))
            capstan.log_metric("test_accuracy", accuracy)
            capstan.log_dict({"classes": sorted(int(c) for c in set(y))}, "classes.json")
            info = capstan.log_model(model, "model", input_example=x_test[:3], serialization_format="pickle")
            print(f"{run.run_name}: accuracy {accuracy:.3f} -> {info.model_uri}")
            if best is None or accuracy > best[0]:
                best = (accuracy, info.model_uri)

    assert best is not None
    client = capstan.Client()
    version = client.register_model(best[1], MODEL)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    champion = capstan.load_model(f"models:/{MODEL}@champion")
    print(f"registered version {version.version} as models:/{MODEL}@champion; "
          f"reloaded accuracy {accuracy_score(y_test, champion.predict(x_test)):.3f}")

    ranked = client.search_runs(experiment_names=[EXPERIMENT], filter_string="metrics.test_accuracy > 0.5",
                                order_by=["metrics.test_accuracy DESC"], max_results=3)
    for stored in ranked:
        print(stored.info.run_name, {m.key: round(m.value, 3) for m in stored.data.metrics})


if __name__ == "__main__":
    main()
