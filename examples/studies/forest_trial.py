"""One trial of ``digits-forest.yaml``: fit a random forest on scikit-learn's digits with the trial's parameters and
print the test accuracy as ``accuracy=VALUE`` (the study reads the last such line).

    python examples/studies/forest_trial.py --max-depth 8 --n-estimators 50
"""

from __future__ import annotations

import argparse

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-depth", type=int, required=True)
    parser.add_argument("--n-estimators", type=int, required=True)
    parser.add_argument("--criterion", default="gini")
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = RandomForestClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth,
                                   criterion=args.criterion, random_state=0)
    model.fit(x_train, y_train)
    print(f"accuracy={accuracy_score(y_test, model.predict(x_test))}")


if __name__ == "__main__":
    main()
