"""hdb_mlops: the shared package of the hdb-mlops course (see README.md)."""

import os

# XGBoost's OpenMP threads spin while they wait for work by default. On a 2-core laptop, two
# trainings at once (two notebooks, or a notebook and the tests) then took 70 s each for a fit
# that takes 20 s alone; with passive waiting they took 30 s each, and a single fit is no
# slower. Only a default: a value set in the environment wins. It must be set before XGBoost
# (and with it the OpenMP runtime) is loaded, which `import hdb_mlops` comes before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
