"""papermill's parameter help (``papermill --help-notebook``) shows each run notebook's parameters with
their type, default and help, read off the typed parameters cell: the cell is the declaration in
rlformal_utils/<experiment>/params.py, line for line."""
import importlib
import logging
from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def declared_type(p) -> str:
    kind = p.kind or type(p.default)
    return "list[str]" if kind is list else kind.__name__


@pytest.mark.parametrize("experiment", ["arithmetic", "sentiment", "games"])
def test_papermill_reads_every_parameter_with_its_type_and_declared_default(experiment, caplog):
    declared = importlib.import_module(f"rlformal_utils.{experiment}.params").PARAMS
    with caplog.at_level(logging.WARNING):
        found = pm.inspect_notebook(str(NOTEBOOKS / f"{experiment}.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert list(found) == [p.name for p in declared]
    for p in declared:
        value = eval(found[p.name]["default"])
        assert value == p.default and type(value) is type(p.default), p.name
        assert found[p.name]["inferred_type_name"] == declared_type(p), p.name
        assert found[p.name]["help"], p.name
