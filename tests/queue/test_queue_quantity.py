import pytest

from capstan.errors import InvalidParameterValue
from capstan.resources.quantity import format_quantity, parse_quantity


@pytest.mark.parametrize(("text", "milli"), [
    ("500m", 500), ("1", 1000), ("1.5", 1500), ("0.25", 250), (2, 2000), (0.5, 500), ("16Gi", 16 * 2**30 * 1000),
    ("1Ki", 1024 * 1000), ("2k", 2_000_000), ("1e3", 1_000_000), ("1M", 10**9), ("100n", 1), ("0", 0),
    (" 4 ", 4000), ("1.5Gi", 1536 * 2**20 * 1000),
])
def test_parses_kubernetes_quantities(text: object, milli: int) -> None:
    assert parse_quantity(text) == milli


@pytest.mark.parametrize("bad", ["-1", "abc", "", "1.2.3", "5x", "Gi", True, None, [], "1e", float("nan"), -0.5])
def test_rejects_bad_quantities_naming_the_path(bad: object) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^flavors\[0\]\.gpu: "):
        parse_quantity(bad, path="flavors[0].gpu")


@pytest.mark.parametrize(("milli", "resource", "text"), [
    (16 * 2**30 * 1000, "memory", "16Gi"), (250, "gpu", "0.25"), (2000, "gpu", "2"), (500, "cpu", "500m"),
])
def test_formats_quantities(milli: int, resource: str, text: str) -> None:
    assert format_quantity(milli, resource) == text
