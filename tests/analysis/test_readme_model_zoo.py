"""README's model-zoo tables say what the one source says: the official figures are
OFFICIAL_MODEL_ZOO's, and our parameter and FLOP counts are those of the table that
``tools/analyze_model.py --official-table`` printed into docs/MODEL_ZOO.md."""
import os
import re

from helpers import REPO

ROW = re.compile(r"^\| \[[^\]]+\]\(configs/(?P<config>[^)]+)\.py\) \|(?P<cells>.*)\|$")


def _readme_rows():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Model zoo"):text.index("## Documentation")]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            cells = [c.strip() for c in match["cells"].split("|")]
            assert match["config"] not in rows, f"{match['config']} twice in README"
            rows[match["config"]] = cells
    return rows


def _pair(cell):
    official, ours = (float(x) for x in cell.split(" / "))
    return official, ours


def _model_zoo_counts():
    """docs/MODEL_ZOO.md's comparison table: row name -> (our params M, our FLOPs G)."""
    with open(os.path.join(REPO, "docs", "MODEL_ZOO.md")) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("| Model | Params (M): ours | official |"))
    counts = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        counts[cells[0]] = (float(cells[1]), float(cells[4]))
    return counts


def test_readme_tables_match_the_official_model_zoo_and_our_counts():
    from involution_d2.analysis.official_zoo import OFFICIAL_MODEL_ZOO

    rows, counts = _readme_rows(), _model_zoo_counts()
    assert sorted(rows) == sorted(r.config[:-5] for r in OFFICIAL_MODEL_ZOO), \
        "README's model zoo must list every official row once"
    for official in OFFICIAL_MODEL_ZOO:
        cells = rows[official.config[:-5]]
        (params, our_params), (flops, our_flops) = _pair(cells[-2]), _pair(cells[-1])
        assert (params, flops) == (official.params_m, official.flops_g), official.config
        metrics = [float(c) for c in cells[:-2] if re.fullmatch(r"\d+\.\d+", c)]
        assert metrics == list(official.metrics.values()), official.config
        assert (our_params, our_flops) == counts[official.name], official.config
