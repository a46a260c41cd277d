"""The parameter-table command prints every Table 2 row with the paper's count."""
import json

from nnunet_allukan.networks.param_table import main, parameter_table


def test_table_rows_and_exact_counts():
    rows = {r["row"]: r for r in parameter_table()}
    assert sorted(rows) == list(range(4, 14))
    assert rows[4]["parameters"] == 2_764_561 and rows[5]["parameters"] == 6_356_689
    assert abs(rows[6]["ratio_to_paper"] - 1) < 0.005
    assert rows[13]["layers"]["KAConv"] == 31 and rows[13]["layers"]["KALinear"] == 12


def test_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "params.json"
    assert main(["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 13 | allukan" in text and "3.17M" in text and str(out.resolve()) in text
    assert len(json.loads(out.read_text())) == 10
