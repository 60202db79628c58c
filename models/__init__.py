"""dse.models: what a workload costs on a machine (operators, collectives, training, inference)."""
