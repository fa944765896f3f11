"""Write the two-factor design's data: ``python make_data.py`` (seconds).

A scaled-down copy of ``benchmarks/many_levels.py``'s two-factor design (its
``two_factor_obs`` and ``simulate_expression``, seed 0): 20,000 cells; 400 donors x 160
plates crossed within 10 days; log-normalised Poisson counts of 8 genes whose log
means carry donor, plate and day effects (some exactly 0).
"""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
from many_levels import simulate_expression, two_factor_obs  # noqa: E402

obs = two_factor_obs(n_cells=20_000, donors=400, plates=160, days=10, seed=0)
Y = simulate_expression(obs, 8, seed=0).toarray()
obs.index = [f"c{i:05d}" for i in range(len(obs))]
obs.to_csv(HERE / "obs.csv.gz", index_label="cell")
expr = obs[[]].assign(**{f"g{j}": Y[:, j] for j in range(Y.shape[1])})
expr.to_csv(HERE / "expr.csv.gz", index_label="cell", float_format="%.10g")
