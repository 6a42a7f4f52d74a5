"""Split kinds, profiles, cost model, planners and the Plan type. Imports no mpi4py or paramiko."""
