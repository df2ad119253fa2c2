"""The paper's experiments at reduced scale (`runs.py`: convergence,
smoothness, depth, skip; each a list of training runs) and their report
(`report.py`: docs/results.md with tables and PNG plots). The command line is
`bin/experiments` (sideways_tf/apps/experiments.py)."""
