"""The metrics of `realdpo eval`, one file each, behind one interface (`base.Metric`); `report.metric_list` gives a
run's list and `report.evaluate` runs it."""
