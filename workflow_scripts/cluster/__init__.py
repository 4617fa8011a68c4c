"""What a job asks of the cluster: SLURM resources and launchers, and the GPU memory plan."""
