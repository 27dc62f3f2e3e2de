"""The data-preparation pipeline that runs before the training in ``capstan quickstart``.

    capstan run examples/pipelines/quickstart_prep.py

It loads scikit-learn's bundled wine data, damages it (missing values, duplicates), repairs it in four indexed
chunks and splits it train/test. The definition lives in `capstan.pipelines.quickstart`.
"""

from capstan.pipelines.quickstart import wine_prep

__all__ = ["wine_prep"]
